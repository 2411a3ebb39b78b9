"""analysis.deeplab2_peer: the peer step's loss, gradients and targets, and its errors.

Building DeepLab2's MaX-DeepLab-S needs DeepLab2's source with compiled protos:
set DEEPLAB2_PATH to the folder holding `deeplab2/` (../shared/tools/setup_deeplab2.sh
makes one); without it those tests are skipped.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.analysis import deeplab2_peer

_DEEPLAB2 = os.environ.get('DEEPLAB2_PATH')
_needs_deeplab2 = pytest.mark.skipif(not _DEEPLAB2, reason='DEEPLAB2_PATH is not set.')


class _Linear(tf_keras.Model):
  """images [1, H, W, 3] -> {'logits': [1, H, W, 2]}, like DeepLab2's output dicts."""

  def __init__(self):
    super().__init__()
    self.dense = tf_keras.layers.Dense(2, use_bias=False)

  def call(self, images, training=False):
    return {'logits': self.dense(images)}


def _mean_logit_loss(targets, outputs):
  """{TOTAL_LOSS: [B]}: the mean logit, weighted by the mean semantic weight."""
  weight = tf.reduce_mean(targets[deeplab2_peer.SEMANTIC_WEIGHT])
  return {deeplab2_peer.TOTAL_LOSS: weight * tf.reduce_mean(outputs['logits'], [1, 2, 3])}


def test_the_peer_step_is_its_loss_with_the_hand_computed_gradient_of_every_weight():
  model = _Linear()
  images = tf.constant(np.arange(12, dtype=np.float32).reshape([1, 2, 2, 3]))
  model(images)
  targets = {deeplab2_peer.SEMANTIC_WEIGHT: tf.fill([1, 2, 2], 3.0)}
  peer = deeplab2_peer.Peer(model, _mean_logit_loss, images, targets)
  total, gradient_sum = deeplab2_peer.train_step(peer)()
  pixels, kernel = images.numpy().reshape([4, 3]), model.dense.kernel.numpy()
  # total = 3 mean(x W) over its 4 x 2 entries; d/dW[i, j] = 3 sum_p x[p, i] / 8.
  assert float(total) == pytest.approx(3.0 * float(np.mean(pixels @ kernel)), rel=1e-6)
  assert float(gradient_sum) == pytest.approx(2.0 * 3.0 * pixels.sum() / 8.0, rel=1e-6)


def test_deeplab2_targets_number_thing_masks_by_first_appearance():
  # Classes 5 (thing) and 7 (stuff); instance ids as the probes' label has them.
  semantic = np.array([[7, 5, 5], [5, 5, 7], [7, 5, 0]])
  instances = np.array([[1, 2, 2], [1, 1, 3], [2, 2, 1]])
  targets = deeplab2_peer.deeplab2_targets(semantic, instances, thing_classes=[5],
                                           ignore_label=0, max_thing_id=4)
  # (5, 2) appears first (row 0), then (5, 1); stuff and void pixels are -1.
  np.testing.assert_array_equal(targets[deeplab2_peer.THING_ID_MASK].numpy()[0],
                                [[-1, 0, 0], [1, 1, -1], [-1, 0, -1]])
  np.testing.assert_array_equal(targets[deeplab2_peer.THING_ID_CLASS].numpy()[0],
                                [5, 5, -1, -1])
  np.testing.assert_array_equal(targets[deeplab2_peer.SEMANTIC].numpy()[0], semantic)
  np.testing.assert_array_equal(targets[deeplab2_peer.SEMANTIC_WEIGHT].numpy(),
                                np.ones([1, 3, 3]))


def test_deeplab2_targets_make_things_past_the_last_id_void():
  semantic = np.array([[5, 5, 6]])
  instances = np.array([[1, 2, 1]])
  targets = deeplab2_peer.deeplab2_targets(semantic, instances, thing_classes=[5, 6],
                                           ignore_label=0, max_thing_id=2)
  np.testing.assert_array_equal(targets[deeplab2_peer.THING_ID_MASK].numpy()[0],
                                [[0, 1, -1]])
  np.testing.assert_array_equal(targets[deeplab2_peer.SEMANTIC].numpy()[0], [[5, 5, 0]])
  np.testing.assert_array_equal(targets[deeplab2_peer.THING_ID_CLASS].numpy()[0], [5, 5])


def test_deeplab2_targets_keep_no_more_masks_than_the_model_has_slots():
  # Stuff classes 7 and 8 take two of 3 slots: one thing is kept, of 3 thing ids.
  semantic = np.array([[5, 7, 5, 8, 0]])
  instances = np.array([[1, 1, 2, 1, 1]])
  targets = deeplab2_peer.deeplab2_targets(semantic, instances, thing_classes=[5],
                                           ignore_label=0, max_thing_id=3,
                                           num_mask_slots=3)
  np.testing.assert_array_equal(targets[deeplab2_peer.THING_ID_MASK].numpy()[0],
                                [[0, -1, -1, -1, -1]])
  np.testing.assert_array_equal(targets[deeplab2_peer.SEMANTIC].numpy()[0],
                                [[5, 7, 0, 8, 0]])


def test_a_folder_without_deeplab2_is_named_with_its_flag(tmp_path):
  with pytest.raises(ValueError, match=f'--deeplab2_path={tmp_path} has no '
                                       'deeplab2/config_pb2.py'):
    deeplab2_peer.check_path(str(tmp_path))


def test_building_the_peer_without_legacy_keras_says_what_to_set(tmp_path, monkeypatch):
  monkeypatch.delenv('TF_USE_LEGACY_KERAS', raising=False)
  with pytest.raises(RuntimeError, match='TF_USE_LEGACY_KERAS=1'):
    deeplab2_peer.build(str(tmp_path), 65, 65)


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


@_needs_deeplab2
def test_the_target_names_are_deeplab2s():
  with open(os.path.join(_DEEPLAB2, 'deeplab2', 'common.py')) as f:
    names = dict(re.findall(r"^(\w+) = '(\w+)'$", f.read(), re.MULTILINE))
  assert (names['GT_SEMANTIC_KEY'], names['GT_THING_ID_MASK_KEY'],
          names['GT_THING_ID_CLASS_KEY'], names['SEMANTIC_LOSS_WEIGHT_KEY'],
          names['TOTAL_LOSS']) == (
              deeplab2_peer.SEMANTIC, deeplab2_peer.THING_ID_MASK,
              deeplab2_peer.THING_ID_CLASS, deeplab2_peer.SEMANTIC_WEIGHT,
              deeplab2_peer.TOTAL_LOSS)
