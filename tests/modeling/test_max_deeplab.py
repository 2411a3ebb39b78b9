"""Tests of MaX-DeepLab-S built from the shared components (tiny widths)."""
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from tests.modeling import cmt_test_utils


def test_dual_path_layers_follow_stage5_blocks_and_the_stride16_block():
  assert max_deeplab.max_deeplab_s_locations() == [
      transformer_decoder.block_location('backbone', 3, 0),
      transformer_decoder.block_location('backbone', 3, 1),
      transformer_decoder.block_location('backbone', 3, 2),
      transformer_decoder.block_location('decoder', 0, 0)]


def test_tiny_max_deeplab_runs_dual_path_layers_in_the_backbone():
  model = max_deeplab.build_max_deeplab(
      cmt_test_utils.tiny_backbone(stage5_blocks=3), num_classes=3,
      num_clusters=4, width_multiplier=cmt_test_utils.TINY_WIDTH)
  outputs = model(tf.random.uniform([2, 49, 33, 3], -1.0, 1.0),
                  training=True, return_visualization=True)
  assert outputs[common.MASK_LOGITS].shape == (2, 13, 9, 4)
  assert outputs[common.CLASS_LOGITS].shape == (2, 4, 4)
  # Four dual-path layers, all at stride 16; no CMT-only outputs.
  assert len(outputs[common.AUX_OUTPUTS]) == 3
  assert [m.shape[1:3] for m in outputs[common.ATTENTION_MAPS]] == [(4, 3)] * 4
  assert outputs[common.CLUSTERING_MAPS] == []
  assert common.REFERENCE_MASK_PARAMETERS not in outputs
  with tf.GradientTape() as tape:
    loss = cmt_test_utils.sum_of_outputs(model(tf.zeros([1, 33, 33, 3]),
                                               training=True))
  gradients = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None for g in gradients)


def test_needs_three_stage5_blocks():
  with pytest.raises(ValueError, match='stage-5'):
    max_deeplab.build_max_deeplab(cmt_test_utils.tiny_backbone(), 3, 4)
