"""MaX-DeepLab-S, the baseline, from the same components as CMT-DeepLab.

MaX-DeepLab-S [1] (DeepLab2 `MaXDeepLabS`): the Axial-R50 pixel path with a
dual-path transformer layer after each of the three stage-5 blocks, one extra
stage-5-like axial block with a dual-path layer (our stride-16 decoder stage),
one bottleneck block at strides 8 and 4, 128 mask slots with 256-wide memory.
The dual-path layers are `ClusteringTransformerLayer`s with every CMT switch off
(`DUAL_PATH_SWITCHES`), so baseline and CMT share one implementation.

[1] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
"""
from cmt_deeplab_tf.modeling import cmt_deeplab
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import transformer_decoder

MAX_DECODER_BLOCKS = (1, 1, 1)
# DeepLab2's dual-path layers have 128 * transformer_expansion filters (1 at
# stride 16), independent of the width multiplier.
TRANSFORMER_FILTERS = 128
_STAGE5_INDEX = 3  # Position of stage 5 in AxialResNet.stages.
_STAGE5_BLOCKS = 3


def max_deeplab_s_locations():
  """Dual-path layers after the stage-5 blocks and the stride-16 decoder block."""
  backbone = [transformer_decoder.block_location(
      transformer_decoder.BACKBONE, _STAGE5_INDEX, block)
              for block in range(_STAGE5_BLOCKS)]
  decoder = transformer_decoder.all_block_locations(
      transformer_decoder.DECODER, MAX_DECODER_BLOCKS, stages=[0])
  return backbone + decoder


def build_max_deeplab(backbone, num_classes, num_clusters,
                      width_multiplier=1.0, transformer_filters=None,
                      name='max_deeplab_s', **widths):
  """Builds a MaX-DeepLab network on an `AxialResNet` with 3 stage-5 blocks.

  Args:
    backbone: An `AxialResNet` whose stage 5 has 3 blocks.
    num_classes: Number of classes C.
    num_clusters: Number of mask slots N (MaX-DeepLab: 128).
    width_multiplier: Scales decoder, center, feed-forward and head widths.
    transformer_filters: Base width of the dual-path layers (see
      `cmt_deeplab.build_network`).
    name: The model name.
    **widths: Explicit `memory_channels`, `feed_forward_channels` or
      `head_feature_channels` (see `cmt_deeplab.build_network`).

  Returns:
    A `CMTDeepLab` model with MaX-DeepLab-S's architecture.

  Raises:
    ValueError: If the backbone's stage 5 does not have 3 blocks.
  """
  if len(backbone.stages[_STAGE5_INDEX]) != _STAGE5_BLOCKS:
    raise ValueError(f'MaX-DeepLab-S needs {_STAGE5_BLOCKS} stage-5 blocks, '
                     f'got {len(backbone.stages[_STAGE5_INDEX])}.')
  return cmt_deeplab.build_network(
      backbone, num_classes, num_clusters, MAX_DECODER_BLOCKS,
      transformer_locations=max_deeplab_s_locations(), dual_path=True,
      width_multiplier=width_multiplier,
      transformer_filters=transformer_filters, name=name, **widths)


def transformer_filters(transformer_expansion=1.0):
  """DeepLab2's stride-16 transformer width: int(128 * transformer_expansion)."""
  return int(TRANSFORMER_FILTERS * transformer_expansion)


def max_deeplab_s(num_classes, num_clusters, width_multiplier=1.0,
                  transformer_expansion=1.0):
  """MaX-DeepLab-S: Axial-R50 pixel path with dual-path layers.

  `width_multiplier` scales every width as DeepLab2's backbone and stem width
  multipliers with the memory, feed-forward and head widths scaled alike; the
  dual-path layers keep DeepLab2's 128 filters times `transformer_expansion`
  (DeepLab2's `base_transformer_expansion`). At width 0.125 the variables have
  the shapes of DeepLab2's 1/8-width MaX-DeepLab-S.
  """
  return build_max_deeplab(
      axial_resnet.axial_r50(width_multiplier=width_multiplier), num_classes,
      num_clusters, width_multiplier=width_multiplier,
      transformer_filters=transformer_filters(transformer_expansion))
