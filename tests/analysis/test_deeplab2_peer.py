"""analysis.deeplab2_peer: the peer step's objective and gradients, and its errors.

Building DeepLab2's MaX-DeepLab-S needs DeepLab2's source with compiled protos:
set DEEPLAB2_PATH to the folder holding `deeplab2/` (../shared/tools/setup_deeplab2.sh
makes one); without it those tests are skipped.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.analysis import deeplab2_peer

_DEEPLAB2 = os.environ.get('DEEPLAB2_PATH')
_needs_deeplab2 = pytest.mark.skipif(not _DEEPLAB2, reason='DEEPLAB2_PATH is not set.')


class _TwoOutputs(tf_keras.Model):
  """A linear map with a floating and an integer output, like DeepLab2's dicts."""

  def __init__(self):
    super().__init__()
    self.dense = tf_keras.layers.Dense(2, use_bias=False)

  def call(self, images, training=False):
    logits = self.dense(images)
    return {'logits': logits, 'argmax': tf.argmax(logits, -1), 'nested': [2.0 * logits]}


def test_the_objective_sums_the_means_of_the_floating_outputs_only():
  logits = tf.constant([[1.0, 3.0], [5.0, 7.0]])
  outputs = {'a': logits, 'ids': tf.constant([1, 2]), 'b': [tf.constant([2.0, 4.0])]}
  assert float(deeplab2_peer.output_objective(outputs)) == pytest.approx(4.0 + 3.0)


def test_the_peer_step_reaches_every_weight_with_its_hand_computed_gradient():
  model = _TwoOutputs()
  images = tf.constant(np.arange(12, dtype=np.float32).reshape([1, 2, 2, 3]))
  model(images)
  objective, gradient_sum = deeplab2_peer.forward_backward(model)(images)
  # objective = mean(x W) + mean(2 x W) = 3 mean(x W); over its 4 x 2 entries
  # d/dW[i, j] = 3 * sum_pixels x[p, i] / 8.
  expected = 3.0 * images.numpy().reshape([4, 3]).sum(0) / 8.0
  kernel = model.dense.kernel.numpy()
  assert float(objective) == pytest.approx(
      3.0 * float(np.mean(images.numpy().reshape([4, 3]) @ kernel)), rel=1e-6)
  assert float(gradient_sum) == pytest.approx(2.0 * expected.sum(), rel=1e-6)


def test_a_folder_without_deeplab2_is_named_with_its_flag(tmp_path):
  with pytest.raises(ValueError, match=f'--deeplab2_path={tmp_path} has no '
                                       'deeplab2/config_pb2.py'):
    deeplab2_peer.check_path(str(tmp_path))


def test_building_the_peer_without_legacy_keras_says_what_to_set(tmp_path, monkeypatch):
  monkeypatch.delenv('TF_USE_LEGACY_KERAS', raising=False)
  with pytest.raises(RuntimeError, match='TF_USE_LEGACY_KERAS=1'):
    deeplab2_peer.build_max_deeplab_s(str(tmp_path), 65, 65)


@_needs_deeplab2
@pytest.mark.slow  # Builds and traces DeepLab2's full-size MaX-DeepLab-S: ~1 minute.
def test_the_peer_probe_measures_one_finite_step_of_deeplab2_max_deeplab_s():
  result = deeplab2_peer.peak_memory(_DEEPLAB2, 129, 129)
  assert np.isfinite(result['loss'])
  # Built and stepped: at least its 77.8M float32 weights, and the step on top.
  assert result['bytes'] > 77_000_000 * 4 and 0 < result['step_bytes'] < result['bytes']
  assert result['what'] == deeplab2_peer.PEER_PEAK_RSS


def test_the_probe_process_fails_clearly_on_a_bad_path(tmp_path):
  with pytest.raises(ValueError, match='has no deeplab2/config_pb2.py'):
    deeplab2_peer.peak_memory(str(tmp_path), 65, 65)
  # The probe's own entry point refuses it too, in its fresh process.
  process = subprocess.run(
      [sys.executable, '-m', 'cmt_deeplab_tf.analysis.deeplab2_peer', str(tmp_path),
       '65', '65'], capture_output=True, text=True, check=False,
      env=dict(os.environ, **deeplab2_peer.LEGACY_KERAS))
  assert process.returncode != 0 and 'config_pb2.py' in process.stderr
