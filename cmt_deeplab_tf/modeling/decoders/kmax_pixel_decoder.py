"""The kMaX-DeepLab pixel decoder: stride 32 -> 16 -> 8 -> 4 (-> 2).

As DeepLab2's `KMaXPixelDecoder` (kMaX-DeepLab [1], Sec. 3.3 and Fig. 2): every
backbone endpoint it reads (the unactivated `stage5`, `stage4`, ...) first goes
through a layer norm; the stride-32 stage runs on the normalised `stage5`, and
each finer stage on the fusion (`pixel_decoder.ResizedFuse`) of the upsampled
coarser output with the normalised backbone features of its stride, both
projected to the stage's base width (DeepLab2's `ResizedFuse` with
`num_channels=dims[i]`: 256, 128, 64). COCO: one axial block (output width 2048)
at stride 32, five axial blocks (1024) at stride 16, one bottleneck block at
stride 8 (512) and at stride 4 (256); Cityscapes adds a bottleneck stage at
stride 2 (128) on the stem output. All activations GeLU.

The 3x3 convolutions of the bottleneck blocks are dilated by 2: DeepLab2
builds the decoder's block groups as ResNet stages at input stride 32 in a
network of output stride 16, whose rule dilates them by 32 / 16.

Every stage output is returned unactivated (DeepLab2's block-group output): the
transformer layers and the heads read them as DeepLab2 does.

[1] k-means Mask Transformer, Yu et al., ECCV 2022.
"""
import tf_keras

from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import pixel_decoder
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import blocks

AXIAL = pixel_decoder.AXIAL
BOTTLENECK = pixel_decoder.BOTTLENECK
STEM = 'stem'
# Backbone endpoints read by the stages, coarsest first (strides 32 .. 2).
ENDPOINTS = (axial_resnet.STAGE5, axial_resnet.STAGE4, axial_resnet.STAGE3,
             axial_resnet.STAGE2, STEM)
STRIDES = (32, 16, 8, 4, 2)
# DeepLab2's COCO decoder (`create_kmax_meta_pixel_decoder`, output stride 4).
COCO_FILTERS = (512, 256, 128, 64)
COCO_BLOCKS = (1, 5, 1, 1)
COCO_BLOCK_TYPES = (AXIAL, AXIAL, BOTTLENECK, BOTTLENECK)
_LAYER_NORM_EPSILON = 1e-6
BOTTLENECK_ATROUS_RATE = 2


def _block(block_type, filters, activation, name):
  if block_type == AXIAL:
    return blocks.AxialBlock(filters, activation=activation, name=name)
  return blocks.BottleneckBlock(filters, atrous_rate=BOTTLENECK_ATROUS_RATE,
                                activation=activation, name=name)


class KMaXPixelDecoder(tf_keras.layers.Layer):
  """Layer-normed backbone features -> unactivated stage outputs, coarse first."""

  def __init__(self, filters=COCO_FILTERS, num_blocks=COCO_BLOCKS,
               block_types=COCO_BLOCK_TYPES, activation=activations.GELU,
               name='kmax_pixel_decoder'):
    """Initializes the decoder.

    Args:
      filters: Base width of each stage's blocks (outputs 4x this), from
        stride 32; 4 stages (to stride 4) or 5 (to stride 2).
      num_blocks: Blocks per stage.
      block_types: 'axial' or 'bottleneck' per stage.
      activation: 'gelu' (kMaX-DeepLab) or 'relu'.
      name: The layer name.

    Raises:
      ValueError: On stage lists of different or unsupported lengths, a
        non-positive block count or an unknown block type.
    """
    filters, num_blocks = tuple(filters), tuple(num_blocks)
    block_types = tuple(block_types)
    if len(filters) not in (4, 5) or not (
        len(filters) == len(num_blocks) == len(block_types)):
      raise ValueError(
          'KMaXPixelDecoder filters, num_blocks and block_types must each '
          f'give 4 or 5 stages, got {filters}, {num_blocks}, {block_types}.')
    if any(n < 1 for n in num_blocks) or any(
        t not in (AXIAL, BOTTLENECK) for t in block_types):
      raise ValueError('KMaXPixelDecoder needs positive block counts and '
                       f'block types in {(AXIAL, BOTTLENECK)}, got '
                       f'num_blocks={num_blocks}, block_types={block_types}.')
    super().__init__(name=name)
    self.strides = STRIDES[:len(filters)]
    self.output_channels = tuple(4 * f for f in filters)
    self._activation = activations.get_activation(activation)
    self.norms = [tf_keras.layers.LayerNormalization(
        epsilon=_LAYER_NORM_EPSILON, name=f'stride{s}_backbone_norm')
                  for s in self.strides]
    self.fuses = [pixel_decoder.ResizedFuse(width, name=f'stride{s}_fuse')
                  for s, width in zip(self.strides[1:], filters[1:])]
    self.stages = []
    for stride, count, block_type, width in zip(self.strides, num_blocks,
                                                 block_types, filters):
      self.stages.append([
          _block(block_type, width, activation,
                 f'stride{stride}_block{index + 1}')
          for index in range(count)])

  def call(self, endpoints, training=None):
    """Runs the decoder.

    Args:
      endpoints: The backbone's unactivated STAGE5..STAGE2 (and `STEM`, the
        stem output, for a stride-2 stage).
      training: Training mode.

    Returns:
      The unactivated stage outputs, one per stride of `self.strides`:
      [B, ceil(H / s), ceil(W / s), 4 * filters].
    """
    outputs = []
    features = None
    for index, (norm, stage) in enumerate(zip(self.norms, self.stages)):
      skip = norm(endpoints[ENDPOINTS[index]], training=training)
      if features is None:
        features = skip
      else:
        fuse = self.fuses[index - 1]
        features = fuse([(self._activation(features), features),
                         (self._activation(skip), skip)], training=training)
      for block in stage:
        features = block(self._activation(features), training=training,
                         activate_output=False)
      outputs.append(features)
    return outputs
