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
from cmt_deeplab_tf.modeling.decoders import pixel_decoder
from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from cmt_deeplab_tf.modeling.heads import mask_transformer_heads
from cmt_deeplab_tf.modeling.heads import semantic_head

MAX_DECODER_BLOCKS = (1, 1, 1)
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


def max_deeplab_s(num_classes, num_clusters):
  """Builds MaX-DeepLab-S.

  Args:
    num_classes: Number of classes C.
    num_clusters: Number of mask slots N (MaX-DeepLab: 128).

  Returns:
    A `CMTDeepLab` model with MaX-DeepLab-S's architecture.
  """
  return cmt_deeplab.CMTDeepLab(
      axial_resnet.axial_r50(),
      pixel_decoder.PixelDecoder(num_blocks=MAX_DECODER_BLOCKS),
      transformer_decoder.TransformerDecoder(
          max_deeplab_s_locations(), num_clusters=num_clusters,
          dual_path=True),
      mask_transformer_heads.MaskTransformerHeads(num_classes),
      semantic_head=semantic_head.SemanticHead(num_classes),
      name='max_deeplab_s')
