"""Named model configurations and the gin-registered `build_model`.

| name               | backbone    | decoder blocks (s16, s8, s4) | transformer layers |
|--------------------|-------------|------------------------------|--------------------|
| max_deeplab_s      | MaX-S       | 1, 1, 1                      | 3 in stage 5 + 1 (dual-path) |
| cmt_deeplab_s      | Axial-R50   | 4, 2, 2                      | 8 CMT, one per decoder block |
| cmt_deeplab_r50    | ResNet-50, 7x7 stem | 4, 2, 2              | 8 CMT (supp. Table 3) |
| cmt_deeplab_l      | Axial-R104  | 4, 2, 2                      | 8 CMT              |
| cmt_deeplab_l_rfn  | 2 x Axial-R104 (RFN) | 4, 2, 2 each        | 2 x 8 CMT, shared centers |
| tiny               | Axial-ResNet, width 1/8, 1-1-1-1 | 1, 1, 1 | 3 CMT, width 1/8 |
| kmax_deeplab_r50   | ResNet-50, 7x7 stem, OS 32 | kMaX: 1, 5, 1, 1 (s32..s4) | 6 k-means (2 per s32, s16, s8) |
| kmax_deeplab_axial_r50 | Axial-R50 GeLU, OS 32 | kMaX: 1, 5, 1, 1      | 6 k-means          |
| kmax_tiny          | Axial-ResNet GeLU, width 1/8, 1-1-1-1 | kMaX: 1, 1, 1, 1 | 3 k-means, width 1/8 |

The kMaX-DeepLab configs (`kmax_deeplab`) have their own decoders: they take
neither `decoder_blocks` nor a `transformer_expansion` other than 1.0.

CMT-DeepLab moves MaX-S's three stage-5 transformer modules out of the backbone
and stacks more decoder blocks (supplement Fig. 1): the stride-16 decoder stage
holds the 3 + 1 axial blocks those modules followed in MaX-S, strides 8 and 4 get
two blocks each, and every decoder block is followed by a CMT layer whose width
scales with its stride (DeepLab2's `transformer_expansion`), with heads of a
constant width (8 / 4 / 2 heads at strides 16 / 8 / 4). With 133 classes
and 128 clusters: 61.90M / 93.41M / 133.70M inference parameters for
max_deeplab_s / cmt_deeplab_s / cmt_deeplab_l (paper: 61.9M / 94.9M / 135.2M);
`scripts/model_stats.py` prints the breakdown and the multiply-adds.

`build_model(width_multiplier=w)` scales every width of a named config with
DeepLab2's rounding int(round(c * w)): stem, stages, decoder, centers,
feed-forward networks and heads. The transformer layers keep DeepLab2's 128
filters at stride 16 (`128 * transformer_expansion`, which DeepLab2's width
multipliers do not scale either), so `max_deeplab_s` at 0.125 has the shapes of
DeepLab2's 1/8-width MaX-DeepLab-S; `build_model(transformer_expansion=e)`
scales those 128 filters as DeepLab2's `base_transformer_expansion` does.

`build_model(kmax_semantic_head=...)` chooses a kMaX config's training-only
semantic branch (`kmax_deeplab.SEMANTIC_HEADS`): 'aspp' (DeepLab2's COCO ASPP
decoder on the backbone; kmax_deeplab_r50 / kmax_deeplab_axial_r50 default)
or 'pixel_decoder' (a head on the stride-4 pixel-decoder output; kmax_tiny's
default). The CMT and MaX configs always use the latter and reject the binding.

`build_model(recompute=...)` is the memory policy: 'none', 'all' or a list of
part kinds (`recompute_policy`) the backward pass of training recomputes;
`set_recompute` applies it to every network of a model.
"""
import gin

from cmt_deeplab_tf.modeling import cmt_deeplab
from cmt_deeplab_tf.modeling import gin_checks
from cmt_deeplab_tf.modeling import kmax_deeplab
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling import recompute_policy
from cmt_deeplab_tf.modeling import rfn
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.layers import stems

CMT_DECODER_BLOCKS = (4, 2, 2)
_TINY_BACKBONE_WIDTH = 0.125
_TINY_HEAD_WIDTH = 0.25
_TINY_HEADS = 4


def _cmt_network(backbone, num_classes, num_clusters, decoder_blocks,
                 width_multiplier, transformer_expansion, name, **kwargs):
  return cmt_deeplab.build_network(
      backbone, num_classes, num_clusters, decoder_blocks,
      width_multiplier=width_multiplier,
      transformer_filters=max_deeplab.transformer_filters(transformer_expansion),
      name=name, **kwargs)


def cmt_deeplab_s(num_classes, num_clusters, decoder_blocks=CMT_DECODER_BLOCKS,
                  width_multiplier=1.0, transformer_expansion=1.0):
  """CMT-DeepLab-S: Axial-R50 backbone.

  ReLU by default; with `AxialResNet.activation = 'gelu'` it is the backbone of
  DeepLab2's ImageNet-22K `maxs_gelu_imagenet_22k_1k_224` (kMaX-DeepLab's
  Axial-ResNet-50), the init of the paper's Axial-R50 rows.
  """
  return _cmt_network(
      axial_resnet.axial_r50(width_multiplier=width_multiplier), num_classes,
      num_clusters, decoder_blocks, width_multiplier, transformer_expansion,
      'cmt_deeplab_s')


def cmt_deeplab_r50(num_classes, num_clusters,
                    decoder_blocks=CMT_DECODER_BLOCKS, width_multiplier=1.0,
                    transformer_expansion=1.0):
  """CMT-DeepLab with ResNet-50 (supplement Table 3).

  The original 7x7 ResNet stem, as the other methods' ResNet-50 in the
  supplement's Table 3 and DeepLab2's `resnet50_imagenet1k`.
  """
  return _cmt_network(
      axial_resnet.resnet50(width_multiplier=width_multiplier,
                            stem_type=stems.RESNET),
      num_classes, num_clusters, decoder_blocks, width_multiplier,
      transformer_expansion, 'cmt_deeplab_r50')


def cmt_deeplab_l(num_classes, num_clusters, decoder_blocks=CMT_DECODER_BLOCKS,
                  width_multiplier=1.0, transformer_expansion=1.0):
  """CMT-DeepLab-L: Axial-R104 backbone."""
  return _cmt_network(
      axial_resnet.axial_r104(width_multiplier=width_multiplier), num_classes,
      num_clusters, decoder_blocks, width_multiplier, transformer_expansion,
      'cmt_deeplab_l')


def cmt_deeplab_l_rfn(num_classes, num_clusters,
                      decoder_blocks=CMT_DECODER_BLOCKS, width_multiplier=1.0,
                      transformer_expansion=1.0):
  """CMT-DeepLab-L-RFN: two Axial-R104 networks sharing their centers."""
  first = _cmt_network(
      axial_resnet.axial_r104(width_multiplier=width_multiplier), num_classes,
      num_clusters, decoder_blocks, width_multiplier, transformer_expansion,
      'first_network')
  second = _cmt_network(
      axial_resnet.axial_r104(width_multiplier=width_multiplier), num_classes,
      num_clusters, decoder_blocks, width_multiplier, transformer_expansion,
      'second_network',
      learn_initial_centers=False)
  return rfn.RecursiveFeatureNetwork(first, second, name='cmt_deeplab_l_rfn')


def tiny(num_classes, num_clusters, decoder_blocks=(1, 1, 1),
         width_multiplier=1.0):
  """A small CMT-DeepLab for CPU tests and the demo, all CMT mechanisms on.

  Its own widths (backbone 1/8, heads and transformer 1/4) times
  `width_multiplier`.
  """
  backbone_widths = dict(width_multiplier=_TINY_BACKBONE_WIDTH * width_multiplier,
                         drop_path_rate=0.0)
  gin_checks.reject_bindings('AxialResNet', backbone_widths,
                             "build_model(name='tiny')")
  backbone = axial_resnet.AxialResNet(
      num_blocks=(1, 1, 1, 1), name='tiny_axial_resnet', **backbone_widths)
  head_width = _TINY_HEAD_WIDTH * width_multiplier
  return cmt_deeplab.build_network(
      backbone, num_classes, num_clusters, decoder_blocks,
      width_multiplier=head_width, num_heads=_TINY_HEADS, name='tiny')


MODELS = {
    'max_deeplab_s': max_deeplab.max_deeplab_s,
    'cmt_deeplab_s': cmt_deeplab_s,
    'cmt_deeplab_r50': cmt_deeplab_r50,
    'cmt_deeplab_l': cmt_deeplab_l,
    'cmt_deeplab_l_rfn': cmt_deeplab_l_rfn,
    'tiny': tiny,
    'kmax_deeplab_r50': kmax_deeplab.kmax_deeplab_r50,
    'kmax_deeplab_axial_r50': kmax_deeplab.kmax_deeplab_axial_r50,
    'kmax_tiny': kmax_deeplab.kmax_tiny,
}
# Configs whose only width argument is `width_multiplier`.
_WIDTH_ONLY = ('tiny', 'kmax_deeplab_r50', 'kmax_deeplab_axial_r50',
               'kmax_tiny')
_FIXED_DECODER = ('max_deeplab_s', 'kmax_deeplab_r50',
                  'kmax_deeplab_axial_r50', 'kmax_tiny')
# Configs with a choice of semantic branch (`kmax_semantic_head`).
_KMAX = ('kmax_deeplab_r50', 'kmax_deeplab_axial_r50', 'kmax_tiny')


def num_classes_for(num_classes: int) -> int:
  """The class count of a class table, checked against any gin binding of it.

  `build_model`'s num_classes follows from the data set's class table; a
  `build_model.num_classes` binding that says otherwise cannot be honoured.
  """
  try:
    bound = gin.query_parameter('build_model.num_classes')
  except ValueError:  # Not bound.
    return num_classes
  if bound != num_classes:
    raise ValueError(f'build_model.num_classes={bound} is bound in gin, but the data '
                     f'set\'s class table has {num_classes} classes; drop the binding '
                     '(the class table decides).')
  return num_classes


def set_recompute(model, recompute):
  """Applies a memory policy to every network of `model` (both of RFN's).

  Read when a training step is traced, so one model can be traced with
  different policies (benchmarks, tests).

  Args:
    model: A model of `build_model`.
    recompute: 'none', 'all' or comma-separated kinds of
      `recompute_policy.KINDS`.

  Raises:
    ValueError: On an unknown kind, naming the valid ones.
  """
  parts = recompute_policy.parse(recompute)
  networks = _networks(model)
  if parts and not networks:
    raise ValueError(f'build_model.recompute={recompute!r}: {model.name} has no '
                     "recompute parts; only 'none' applies to it.")
  for network in networks:
    network.recompute_parts = parts


def recompute_kinds(model):
  """The part kinds of `recompute_policy.KINDS` that `model` has, in that order.

  Those of every network (both of RFN's); none for a model without recompute
  (kMaX), whose only policy is 'none'. A policy naming other kinds is valid
  but recomputes nothing more.
  """
  present = {kind for network in _networks(model) for kind in network.recompute_kinds}
  return tuple(kind for kind in recompute_policy.KINDS if kind in present)


def _networks(model):
  """The `CMTDeepLab` networks of `model` (itself, or both of RFN's)."""
  return [network for network in [model] + list(model.submodules)
          if isinstance(network, cmt_deeplab.CMTDeepLab)]


@gin.configurable
def build_model(name='cmt_deeplab_s', num_classes=133, num_clusters=128,
                decoder_blocks=None, width_multiplier=1.0,
                transformer_expansion=1.0, recompute=recompute_policy.NONE,
                kmax_semantic_head=None):
  """Builds a named model.

  Args:
    name: One of `MODELS`.
    num_classes: Number of classes C (133 for COCO panoptic).
    num_clusters: Number of cluster centers N (mask slots).
    decoder_blocks: Optional pixel-decoder blocks at strides 16, 8, 4 for the
      CMT configs (one CMT layer per block); default: the config's own.
    width_multiplier: Scales every width of the config (see the module
      docstring); 1.0 is the published model.
    transformer_expansion: Scales the transformer layers' 128 filters at
      stride 16 (DeepLab2's `base_transformer_expansion`); 1.0 is the
      published model. `tiny` has its own transformer width and takes only 1.0.
    recompute: The memory policy: which parts the backward pass of training
      recomputes instead of keeping their activations; 'none', 'all' or
      comma-separated kinds of `recompute_policy.KINDS` (stem,
      backbone_stage2..5, pixel_decoder_s16/s8/s4, transformer_s16/s8/s4,
      heads). Outputs and gradients are the same.
    kmax_semantic_head: A kMaX config's training-only semantic branch, one of
      `kmax_deeplab.SEMANTIC_HEADS` ('aspp', 'pixel_decoder'); default (None):
      the config's own ('aspp' for kmax_deeplab_r50 / kmax_deeplab_axial_r50,
      'pixel_decoder' for kmax_tiny). Only the kMaX configs take it.

  Returns:
    A `tf_keras.Model` whose call(images, training=..., return_visualization=...)
    returns the output dict of `cmt_deeplab_tf.common`.

  Raises:
    ValueError: On an unknown name, non-positive sizes, width or expansion,
      an expansion for `tiny` or a kMaX config, decoder_blocks given for
      max_deeplab_s or a kMaX config (their decoders are fixed), or an unknown
      recompute part kind (or any for a model without recompute: kMaX), or
      a kmax_semantic_head that is unknown or given for a non-kMaX config.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model name={name!r}; expected one of '
                     f'{sorted(MODELS)}.')
  if num_classes < 1 or num_clusters < 1:
    raise ValueError(f'num_classes and num_clusters must be positive, got '
                     f'num_classes={num_classes}, num_clusters={num_clusters}.')
  if width_multiplier <= 0 or transformer_expansion <= 0:
    raise ValueError('build_model.width_multiplier and transformer_expansion '
                     f'must be positive, got {width_multiplier} and '
                     f'{transformer_expansion}.')
  recompute_policy.parse(recompute)  # Checked before anything is built.
  options = dict(width_multiplier=width_multiplier)
  if kmax_semantic_head is not None:
    if name not in _KMAX:
      raise ValueError(f'build_model.kmax_semantic_head={kmax_semantic_head!r} '
                       f'cannot be set for name={name!r}: only the kMaX configs '
                       f'{_KMAX} have a choice of semantic head.')
    if kmax_semantic_head not in kmax_deeplab.SEMANTIC_HEADS:
      raise ValueError(f'Unknown build_model.kmax_semantic_head='
                       f'{kmax_semantic_head!r}; expected one of '
                       f'{kmax_deeplab.SEMANTIC_HEADS}.')
    options['semantic_head'] = kmax_semantic_head
  if name in _WIDTH_ONLY:
    if transformer_expansion != 1.0:
      raise ValueError("build_model.transformer_expansion cannot be set for "
                       f"name={name!r}, got {transformer_expansion}.")
  else:
    options['transformer_expansion'] = transformer_expansion
  if decoder_blocks is None:
    model = MODELS[name](num_classes, num_clusters, **options)
  elif name in _FIXED_DECODER:
    raise ValueError(f'decoder_blocks cannot be set for {name}, got '
                     f'decoder_blocks={decoder_blocks}.')
  else:
    model = MODELS[name](num_classes, num_clusters, tuple(decoder_blocks),
                         **options)
  set_recompute(model, recompute)
  return model
