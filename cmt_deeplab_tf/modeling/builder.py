"""Named model configurations and the gin-registered `build_model`.

| name               | backbone    | decoder blocks (s16, s8, s4) | transformer layers |
|--------------------|-------------|------------------------------|--------------------|
| max_deeplab_s      | MaX-S       | 1, 1, 1                      | 3 in stage 5 + 1 (dual-path) |
| cmt_deeplab_s      | Axial-R50   | 4, 2, 2                      | 8 CMT, one per decoder block |
| cmt_deeplab_r50    | ResNet-50   | 4, 2, 2                      | 8 CMT (supp. Table 3) |
| cmt_deeplab_l      | Axial-R104  | 4, 2, 2                      | 8 CMT              |
| cmt_deeplab_l_rfn  | 2 x Axial-R104 (RFN) | 4, 2, 2 each        | 2 x 8 CMT, shared centers |
| tiny               | Axial-ResNet, width 1/8, 1-1-1-1 | 1, 1, 1 | 3 CMT, width 1/8 |

CMT-DeepLab moves MaX-S's three stage-5 transformer modules out of the backbone
and stacks more decoder blocks (supplement Fig. 1): the stride-16 decoder stage
holds the 3 + 1 axial blocks those modules followed in MaX-S, strides 8 and 4 get
two blocks each, and every decoder block is followed by a CMT layer whose width
scales with its stride (DeepLab2's `transformer_expansion`), with heads of a
constant width (8 / 4 / 2 heads at strides 16 / 8 / 4). With 133 classes
and 128 clusters: 61.90M / 93.41M / 133.70M inference parameters for
max_deeplab_s / cmt_deeplab_s / cmt_deeplab_l (paper: 61.9M / 94.9M / 135.2M);
`scripts/model_stats.py` prints the breakdown and the multiply-adds.
"""
import gin

from cmt_deeplab_tf.modeling import cmt_deeplab
from cmt_deeplab_tf.modeling import gin_checks
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling import rfn
from cmt_deeplab_tf.modeling.backbones import axial_resnet

CMT_DECODER_BLOCKS = (4, 2, 2)
_TINY_BACKBONE_WIDTH = 0.125
_TINY_HEAD_WIDTH = 0.25
_TINY_HEADS = 4


def cmt_deeplab_s(num_classes, num_clusters,
                  decoder_blocks=CMT_DECODER_BLOCKS):
  """CMT-DeepLab-S: Axial-R50 backbone."""
  return cmt_deeplab.build_network(
      axial_resnet.axial_r50(), num_classes, num_clusters, decoder_blocks,
      name='cmt_deeplab_s')


def cmt_deeplab_r50(num_classes, num_clusters,
                    decoder_blocks=CMT_DECODER_BLOCKS):
  """CMT-DeepLab with a plain ResNet-50(-beta) backbone (supplement Table 3)."""
  return cmt_deeplab.build_network(
      axial_resnet.resnet50(), num_classes, num_clusters, decoder_blocks,
      name='cmt_deeplab_r50')


def cmt_deeplab_l(num_classes, num_clusters,
                  decoder_blocks=CMT_DECODER_BLOCKS):
  """CMT-DeepLab-L: Axial-R104 backbone."""
  return cmt_deeplab.build_network(
      axial_resnet.axial_r104(), num_classes, num_clusters, decoder_blocks,
      name='cmt_deeplab_l')


def cmt_deeplab_l_rfn(num_classes, num_clusters,
                      decoder_blocks=CMT_DECODER_BLOCKS):
  """CMT-DeepLab-L-RFN: two Axial-R104 networks sharing their centers."""
  first = cmt_deeplab.build_network(
      axial_resnet.axial_r104(), num_classes, num_clusters, decoder_blocks,
      name='first_network')
  second = cmt_deeplab.build_network(
      axial_resnet.axial_r104(), num_classes, num_clusters, decoder_blocks,
      learn_initial_centers=False, name='second_network')
  return rfn.RecursiveFeatureNetwork(first, second, name='cmt_deeplab_l_rfn')


def tiny(num_classes, num_clusters, decoder_blocks=(1, 1, 1)):
  """A small CMT-DeepLab for CPU tests and the demo, all CMT mechanisms on."""
  backbone_widths = dict(width_multiplier=_TINY_BACKBONE_WIDTH,
                         drop_path_rate=0.0)
  gin_checks.reject_bindings('AxialResNet', backbone_widths,
                             "build_model(name='tiny')")
  backbone = axial_resnet.AxialResNet(
      num_blocks=(1, 1, 1, 1), name='tiny_axial_resnet', **backbone_widths)
  return cmt_deeplab.build_network(
      backbone, num_classes, num_clusters, decoder_blocks,
      width_multiplier=_TINY_HEAD_WIDTH, num_heads=_TINY_HEADS, name='tiny')


MODELS = {
    'max_deeplab_s': max_deeplab.max_deeplab_s,
    'cmt_deeplab_s': cmt_deeplab_s,
    'cmt_deeplab_r50': cmt_deeplab_r50,
    'cmt_deeplab_l': cmt_deeplab_l,
    'cmt_deeplab_l_rfn': cmt_deeplab_l_rfn,
    'tiny': tiny,
}


@gin.configurable
def build_model(name='cmt_deeplab_s', num_classes=133, num_clusters=128,
                decoder_blocks=None):
  """Builds a named model.

  Args:
    name: One of `MODELS`.
    num_classes: Number of classes C (133 for COCO panoptic).
    num_clusters: Number of cluster centers N (mask slots).
    decoder_blocks: Optional pixel-decoder blocks at strides 16, 8, 4 for the
      CMT configs (one CMT layer per block); default: the config's own.

  Returns:
    A `tf_keras.Model` whose call(images, training=..., return_visualization=...)
    returns the output dict of `cmt_deeplab_tf.common`.

  Raises:
    ValueError: On an unknown name, non-positive sizes, or decoder_blocks
      given for max_deeplab_s (its decoder is fixed by MaX-DeepLab-S).
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model name={name!r}; expected one of '
                     f'{sorted(MODELS)}.')
  if num_classes < 1 or num_clusters < 1:
    raise ValueError(f'num_classes and num_clusters must be positive, got '
                     f'num_classes={num_classes}, num_clusters={num_clusters}.')
  if decoder_blocks is None:
    return MODELS[name](num_classes, num_clusters)
  if name == 'max_deeplab_s':
    raise ValueError('decoder_blocks cannot be set for max_deeplab_s, got '
                     f'decoder_blocks={decoder_blocks}.')
  return MODELS[name](num_classes, num_clusters, tuple(decoder_blocks))
