"""The pixel decoder: stride 16 -> 8 -> 4 with stacked residual blocks.

As MaX-DeepLab's extra decoder [1] (DeepLab2 `AxialResNet` with
`extra_decoder_*`): a stride-16 stage of stage-5-like axial blocks on the
backbone's `res5`, then at strides 8 and 4 a fusion of the upsampled features with
the backbone's stride-8 / stride-4 features (DeepLab2 `ResizedFuse`: an input
whose width differs is activated and projected by a 1x1 conv + BN, an input of
the fused width enters unactivated; align-corners bilinear resize, sum; the next
block activates the sum) followed by bottleneck blocks. Stage widths follow
ResNet (2048, 512, 256 channels).

MaX-DeepLab-S uses one block per stage. CMT-DeepLab "stacks more blocks in the
decoder" (supplement §1, Fig. 1); the count per stage is `num_blocks`.

The models run the stages in their own forward loop (`cmt_deeplab.CMTDeepLab.
forward`): `enter_stage`, then each block, followed by a transformer layer on the
block's unactivated output, as DeepLab2's transformer layers (the dual-path
design of [1], the frequent pixel update of [2]). `call` runs the decoder alone.

[1] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
[2] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import blocks
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import resize

AXIAL = 'axial'
BOTTLENECK = 'bottleneck'
STRIDES = (16, 8, 4)
# Backbone endpoints (activated, unactivated) fused into the stride-8 and
# stride-4 stages; the stride-16 stage reads the activated RES5.
_SKIP_INPUTS = ((axial_resnet.RES3, axial_resnet.STAGE3),
                (axial_resnet.RES2, axial_resnet.STAGE2))


class ResizedFuse(tf_keras.layers.Layer):
  """Projects (1x1 conv + BN, if needed), resizes and sums features."""

  def __init__(self, channels, name=None):
    super().__init__(name=name)
    self._channels = channels
    self._projections = None

  def build(self, input_shape):
    self._projections = [
        None if shape[0][-1] == self._channels else
        conv_bn.ConvBN(self._channels, 1, use_relu=False, name=f'project{i}')
        for i, shape in enumerate(input_shape)]
    super().build(input_shape)

  def call(self, inputs, training=None):
    """Fuses [coarse, skip] into [B, skip_h, skip_w, channels].

    Args:
      inputs: Two (activated, unactivated) pairs of [B, h_i, w_i, C_i]
        features, the coarse one first. An input of the fused width enters
        unactivated, any other is projected from its activated form, as in
        DeepLab2's `ResizedFuse`.
      training: Whether batch norms use batch statistics.

    Returns:
      The unactivated sum [B, skip_h, skip_w, channels].
    """
    height, width = resize.spatial_size(inputs[-1][0])
    fused = []
    for (activated, preactivation), projection in zip(inputs,
                                                      self._projections):
      features = preactivation
      if projection is not None:
        features = projection(activated, training=training)
      fused.append(resize.resize_align_corners(features, height, width))
    return tf.add_n(fused)


@gin.configurable(denylist=['num_blocks', 'width_multiplier'])
class PixelDecoder(tf_keras.layers.Layer):
  """Stacked decoder stages at strides 16, 8 and 4."""

  def __init__(self,
               num_blocks=(4, 2, 2),
               block_types=(AXIAL, BOTTLENECK, BOTTLENECK),
               width_multiplier=1.0,
               drop_path_rate=0.0,
               name='pixel_decoder'):
    """Initializes the decoder.

    Args:
      num_blocks: Blocks at strides 16, 8, 4 (MaX-DeepLab-S: (1, 1, 1)).
      block_types: 'axial' or 'bottleneck' per stage.
      width_multiplier: Scales the stage widths 2048, 512, 256 (as the
        backbone's `width_multiplier`).
      drop_path_rate: Drop-path rate of every decoder block.
      name: The layer name.

    Raises:
      ValueError: On a bad `num_blocks` or `block_types`.
    """
    num_blocks, block_types = tuple(num_blocks), tuple(block_types)
    if len(num_blocks) != len(STRIDES) or any(n < 1 for n in num_blocks):
      raise ValueError('PixelDecoder num_blocks must be 3 positive counts '
                       f'(strides 16, 8, 4), got num_blocks={num_blocks}.')
    if len(block_types) != len(STRIDES) or any(
        t not in (AXIAL, BOTTLENECK) for t in block_types):
      raise ValueError(f'PixelDecoder block_types must be 3 of {AXIAL!r} or '
                       f'{BOTTLENECK!r}, got block_types={block_types}.')
    super().__init__(name=name)
    self.num_blocks = num_blocks
    # Bottleneck widths of ResNet stages 5, 3, 2: blocks output 4x these.
    stage_filters = [int(round(f * width_multiplier)) for f in (512, 128, 64)]
    self.output_channels = tuple(4 * f for f in stage_filters)
    self.fuses = [None] + [
        ResizedFuse(channels, name=f'stride{stride}_fuse')
        for stride, channels in zip(STRIDES[1:], self.output_channels[1:])]
    self.stages = []
    for stride, count, block_type, filters in zip(
        STRIDES, num_blocks, block_types, stage_filters):
      block_class = (blocks.AxialBlock if block_type == AXIAL else
                     blocks.BottleneckBlock)
      self.stages.append([
          block_class(filters, drop_path_rate=drop_path_rate,
                      name=f'stride{stride}_block{index + 1}')
          for index in range(count)])

  def enter_stage(self, stage_index, features, preactivation, endpoints,
                  training=None):
    """The input of stage `stage_index`: activated [B, h_s, w_s, C].

    Args:
      stage_index: 0, 1 or 2 (strides 16, 8, 4).
      features: The previous stage's activated output (ignored by stage 0).
      preactivation: The same before its activation (ignored by stage 0).
      endpoints: The backbone's dict with RES5, RES3, RES2 and their
        unactivated STAGE5, STAGE3, STAGE2 (any widths).
      training: Whether batch norms use batch statistics.

    Returns:
      Stage 0: the backbone's RES5; stages 1 and 2: the activated fusion of
      the previous stage's output with the backbone's stride-8 / stride-4
      features.
    """
    if stage_index == 0:
      return endpoints[axial_resnet.RES5]
    skip = [endpoints[key] for key in _SKIP_INPUTS[stage_index - 1]]
    return tf.nn.relu(self.fuses[stage_index](
        [(features, preactivation), skip], training=training))

  def call(self, endpoints, training=None):
    """Runs the decoder alone.

    Args:
      endpoints: The backbone's dict with RES5, RES3, RES2 and their
        unactivated STAGE5, STAGE3, STAGE2 (any widths).
      training: Whether batch norms use batch statistics.

    Returns:
      A list of the activated stage outputs at strides 16, 8, 4:
      [B, ceil(H/16), ceil(W/16), 2048w], [B, ceil(H/8), ..., 512w],
      [B, ceil(H/4), ceil(W/4), 256w].
    """
    outputs = []
    features = preactivation = None
    for stage_index, stage in enumerate(self.stages):
      features = self.enter_stage(stage_index, features, preactivation,
                                  endpoints, training=training)
      for block in stage:
        preactivation = block(features, training=training,
                              activate_output=False)
        features = tf.nn.relu(preactivation)
      outputs.append(features)
    return outputs
