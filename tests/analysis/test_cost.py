"""Tests of the accuracy-cost measurements (supplement Table 2)."""
import math
import types

from absl import app
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf import cost_table
from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.modeling import flop_count


class _SmallNet(tf_keras.Model):
  """One layer of each counted kind: conv, depthwise conv, dense (MatMul), einsum."""

  def __init__(self):
    super().__init__()
    self.conv = tf_keras.layers.Conv2D(8, 3, padding='same')
    self.depthwise = tf_keras.layers.DepthwiseConv2D(3, padding='same')
    self.dense = tf_keras.layers.Dense(4)
    self.projection = tf.Variable(tf.ones([4, 5]))

  def call(self, images, training=False):
    features = self.dense(self.depthwise(self.conv(images)))
    return tf.einsum('bhwc,cd->bhwd', features, self.projection)


@pytest.fixture(scope='module')
def tiny():
  return cost.build('tiny', num_classes=5, num_clusters=8)


def test_parameters_are_the_models_minus_the_training_only_head(tiny):
  total = sum(v.shape.num_elements() for v in tiny.trainable_variables)
  semantic_head = sum(v.shape.num_elements()
                      for v in tiny.semantic_head.trainable_variables)
  assert semantic_head > 0
  assert cost.inference_parameters(tiny) == total - semantic_head


def test_convolution_multiply_adds_double_with_twice_the_pixels(tiny):
  _, narrow = flop_count.count_multiply_adds(tiny, 64, 64)
  _, wide = flop_count.count_multiply_adds(tiny, 64, 128)
  assert wide['Conv2D'] == 2 * narrow['Conv2D']
  assert wide['DepthwiseConv2dNative'] == 2 * narrow['DepthwiseConv2dNative']
  # Axial attention along the width grows faster than the pixel count.
  assert 2 * narrow['Einsum'] < wide['Einsum'] <= 4 * narrow['Einsum']


def test_multiply_adds_match_a_hand_count():
  total, counts = flop_count.count_multiply_adds(_SmallNet(), 16, 16)
  pixels = 16 * 16
  expected = {'Conv2D': pixels * 8 * 3 * 3 * 3, 'DepthwiseConv2dNative': pixels * 8 * 9,
              'MatMul': pixels * 8 * 4, 'Einsum': pixels * 4 * 5}
  assert counts == expected
  assert total == sum(expected.values())


def test_frames_per_second_is_positive_and_needs_a_run():
  fps = cost.frames_per_second(_SmallNet(), 16, 16, runs=2)
  assert fps > 0 and math.isfinite(fps)
  with pytest.raises(ValueError, match='runs'):
    cost.frames_per_second(_SmallNet(), 16, 16, runs=0)


def test_random_training_batch_has_the_pipelines_targets():
  batch = cost.random_training_batch(100, 150, num_classes=7, max_num_masks=16)
  assert batch[common.IMAGE].shape == (1, 100, 150, 3)
  for key in (common.SEMANTIC, common.MASK_INDEX, common.PIXEL_WEIGHT):
    assert batch[key].shape == (1, 100, 150)
  mask_index = batch[common.MASK_INDEX].numpy()
  num_masks = int(batch[common.GT_VALID].numpy().sum())
  assert 1 < num_masks <= 16
  assert set(np.unique(mask_index[mask_index >= 0])) == set(range(num_masks))
  assert (batch[common.GT_CLASSES].numpy()[0, :num_masks] < 7).all()


def _measurement(name):
  return cost.Measurement(name, params=94_900_000, multiply_adds=396_400_000_000,
                          fps=0.41, memory_bytes=3 * 2**30)


def test_table_keeps_every_paper_row_and_puts_ours_under_its_method():
  table = cost.markdown_table([_measurement('cmt_deeplab_l_rfn'), _measurement('tiny')],
                              'CPU')
  lines = table.splitlines()
  assert lines[0] == '| method | epochs | memory | params | FLOPs | FPS | PQ |'
  for row in cost.PAPER_ROWS:
    assert sum(line.startswith(f'| {row.method} (paper) | {row.epochs} |')
               for line in lines) == 1
  assert '| MaX-DeepLab-S (paper) | 216 | 6.3G | 62M | 291G | 11.9 | 48.4 |' in lines
  assert '| MaskFormer-SwinB (paper) | 300 | - | 102M | 411G | 8.4 | 51.8 |' in lines
  assert '| CMT-DeepLab-L (paper) | 54 | 11.8G | 135M | 553G | 6.0 | 54.1 |' in lines
  ours = '| cmt_deeplab_l_rfn (ours, CPU) | - | 3.0G | 94.9M | 396G | 0.41 | - |'
  rfn_54 = lines.index('| CMT-DeepLab-L-RFN (paper) | 54 | 25.8G | 270M | 1114G | 3.2 | 55.1 |')
  assert lines[rfn_54 + 1] == ours
  assert lines[-1] == '| tiny (ours, CPU) | - | 3.0G | 94.9M | 396G | 0.41 | - |'
  assert len(lines) == 2 + len(cost.PAPER_ROWS) + 2


def test_unmeasured_figures_show_a_dash_and_a_failed_probe_says_so():
  unmeasured = cost.Measurement('max_deeplab_s', 61_900_000, 291_000_000_000, None, None)
  failed = cost.Measurement('cmt_deeplab_s', 94_900_000, 396_000_000_000, 0.5, None,
                            memory_error='Memory probe of cmt_deeplab_s failed')
  lines = cost.markdown_table([unmeasured, failed], 'GPU').splitlines()
  assert '| max_deeplab_s (ours, GPU) | - | - | 61.9M | 291G | - | - |' in lines
  assert '| cmt_deeplab_s (ours, GPU) | - | failed | 94.9M | 396G | 0.5 | - |' in lines


@pytest.mark.parametrize('override, flag', [({'models': ['resnet']}, '--models'),
                                            ({'height': 0}, '--height'),
                                            ({'fps_runs': -1}, '--fps_runs')])
def test_bad_flags_are_named(override, flag):
  values = dict(models=['tiny'], num_classes=5, num_clusters=8, height=64, width=64,
                fps_runs=1)
  values.update(override)
  with pytest.raises(app.UsageError, match=flag):
    cost_table.check_flags(types.SimpleNamespace(**values))


# The axial blocks of the tiny model: stage 5 and the stride-16 decoder stage.
_AXIAL_RECOMPUTE = "build_model.recompute = 'backbone_stage5,pixel_decoder_s16'"


@pytest.mark.slow
def test_training_step_memory_in_a_fresh_process(monkeypatch):
  # The probes' allocator keeps statistics (TensorFlow's default CPU one keeps none).
  monkeypatch.setenv('TF_CPU_ALLOCATOR_USE_BFC', 'true')
  result = cost.training_step_peak_memory('tiny', 5, 8, 65, 65,
                                          gin_bindings=[_AXIAL_RECOMPUTE])
  assert result['what'] == (cost.GPU_PEAK if tf.config.list_physical_devices('GPU')
                            else cost.CPU_PEAK_RSS)
  assert result['bytes'] > 0 and math.isfinite(result['loss'])
  assert 'step_bytes' not in result or 0 <= result['step_bytes'] <= result['bytes']
  # Without the update there are no AdamW slots (two per variable) to allocate.
  without_update = cost.training_step_peak_memory(
      'tiny', 5, 8, 65, 65, gin_bindings=[_AXIAL_RECOMPUTE],
      mode=cost.FORWARD_BACKWARD)
  assert 0 < without_update['allocator_step_bytes'] < result['allocator_step_bytes']


@pytest.mark.slow
def test_a_mixed_precision_binding_sets_the_probes_dtype_policy():
  result = cost.training_step_peak_memory(
      'tiny', 5, 8, 65, 65, mode=cost.FORWARD_BACKWARD,
      gin_bindings=["ExperimentConfig.mixed_precision = 'mixed_bfloat16'"])
  assert result['dtype_policy'] == 'mixed_bfloat16' and math.isfinite(result['loss'])
  assert 'AdamW' not in result['what'] and 'forward + backward' in result['what']


def test_unknown_memory_probe_mode_is_named():
  with pytest.raises(ValueError, match="mode must be one of .* got 'update'"):
    cost.training_step_peak_memory('tiny', 5, 8, 65, 65, mode='update')


def test_memory_probe_over_its_limit_is_stopped():
  # Importing TensorFlow alone takes more than 100 MiB.
  with pytest.raises(MemoryError, match='tiny at 65x65 went over 0.1 GiB'):
    cost.training_step_peak_memory('tiny', 5, 8, 65, 65, memory_limit_bytes=100 * 2**20)


@pytest.mark.slow
def test_measure_fills_params_flops_and_fps():
  measurement = cost.measure('tiny', 5, 8, 65, 65, fps_runs=1, with_memory=False)
  assert measurement.params > 0 and measurement.multiply_adds > 0
  assert measurement.fps > 0 and measurement.memory_bytes is None


def _policy_config(tmp_path, *lines):
  path = tmp_path / 'policy.gin'
  path.write_text('\n'.join(["include 'coco/base.gin'", *lines]) + '\n')
  return str(path)


def test_a_config_s_model_and_memory_policy_are_read_through_its_includes(tmp_path):
  path = _policy_config(tmp_path, "build_model.name = 'max_deeplab_s'",
                        "build_model.recompute = 'stem,heads'", 'PanopticLoss.recompute = False')
  assert cost.shipped_policy(path) == ('max_deeplab_s', 'stem,heads', False)
  # Only the base's policy: what coco/base.gin binds.
  path = _policy_config(tmp_path, "build_model.name = 'cmt_deeplab_s'")
  name, recompute, loss_recompute = cost.shipped_policy(path)
  base = open(config_files.find('coco/base.gin')).read()
  assert name == 'cmt_deeplab_s'
  assert f"build_model.recompute = '{recompute}'" in base
  assert f'PanopticLoss.recompute = {loss_recompute}' in base


def test_the_cost_table_measures_memory_with_the_policy_each_coco_config_ships():
  shipped = cost.shipped_policy('coco/cmt_deeplab_l_rfn.gin')
  assert cost_table.memory_policy('cmt_deeplab_l_rfn', 'shipped') == shipped[1:]
  assert cost_table.memory_policy('cmt_deeplab_l_rfn', 'none') == ('none', False)
  with pytest.raises(app.UsageError, match='--policy=shipped: tiny has no coco/tiny.gin'):
    cost_table.memory_policy('tiny', 'shipped')
