"""Tests of the stride 16 -> 8 -> 4 pixel decoder."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import pixel_decoder
from cmt_deeplab_tf.modeling.layers import blocks

WIDTH = 0.0625  # Stage widths 128, 32, 16.


def _endpoints(height, width):
  def features(stride, channels):
    return tf.random.normal([2, -(-height // stride), -(-width // stride),
                             channels])
  endpoints = {axial_resnet.STAGE2: features(4, 16),
               axial_resnet.STAGE3: features(8, 32),
               axial_resnet.STAGE5: features(16, 128)}
  for activated, preactivation in zip(axial_resnet.ENDPOINTS,
                                      axial_resnet.PREACTIVATIONS):
    if preactivation in endpoints:
      endpoints[activated] = tf.nn.relu(endpoints[preactivation])
  return endpoints


@pytest.mark.parametrize('height,width', [(65, 65), (50, 93)])
def test_outputs_at_strides_16_8_4(height, width):
  decoder = pixel_decoder.PixelDecoder(num_blocks=(1, 2, 1),
                                       width_multiplier=WIDTH)
  outputs = decoder(_endpoints(height, width), training=True)
  assert [tuple(o.shape) for o in outputs] == [
      (2, -(-height // s), -(-width // s), c)
      for s, c in zip((16, 8, 4), decoder.output_channels)]
  assert decoder.output_channels == (128, 32, 16)


def test_block_types_and_counts():
  decoder = pixel_decoder.PixelDecoder(num_blocks=(2, 1, 3),
                                       width_multiplier=WIDTH)
  assert [len(stage) for stage in decoder.stages] == [2, 1, 3]
  assert all(isinstance(b, blocks.AxialBlock) for b in decoder.stages[0])
  assert all(isinstance(b, blocks.BottleneckBlock)
             for stage in decoder.stages[1:] for b in stage)


def test_fuse_projects_only_inputs_of_another_width():
  fuse = pixel_decoder.ResizedFuse(16)
  coarse, skip = tf.random.normal([1, 3, 3, 32]), tf.random.normal(
      [1, 5, 5, 16])
  fused = fuse([(tf.nn.relu(coarse), coarse), (tf.nn.relu(skip), skip)],
               training=False)
  assert fused.shape == (1, 5, 5, 16)
  # One 1x1 projection 32 -> 16 plus its BN (gamma, beta); the skip is not
  # projected.
  assert sum(int(np.prod(v.shape)) for v in fuse.trainable_variables) == (
      32 * 16 + 2 * 16)
  # Align-corners upsampling keeps the corner values of the projection. As in
  # DeepLab2, the projection reads the activated input, the input of the
  # fused width enters unactivated and the sum is not activated.
  projected = fuse._projections[0](tf.nn.relu(coarse), training=False)
  np.testing.assert_allclose(fused[0, 0, 0],
                             projected[0, 0, 0] + skip[0, 0, 0], atol=1e-5)
  assert np.min(skip) < 0 and np.min(fused) < 0


@pytest.mark.parametrize('kwargs', [dict(num_blocks=(1, 1)),
                                    dict(num_blocks=(1, 0, 1)),
                                    dict(block_types=('axial', 'conv', 'axial'))])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    pixel_decoder.PixelDecoder(**kwargs)
