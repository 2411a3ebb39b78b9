"""DeepLab2 checkpoints: their layouts and the mapping onto this package's models.

DeepLab2 (google-research/deeplab2) publishes TF2 object-based checkpoints keyed
by `model.checkpoint_items` (model zoo: g3doc/projects/
imagenet_pretrained_checkpoints.md, g3doc/projects/max_deeplab.md and
g3doc/projects/kmax_deeplab.md). Keys name
DeepLab2's private attributes, e.g.
`encoder/_stage4/_block2/_attention/_height_axis/qkv_kernel`; a checkpoint
written by Model Garden's vision trainer has `backbone/_encoder/` where DeepLab2
has `encoder/`. Four layouts are known (`LAYOUTS`):

| layout          | published checkpoints                                   | maps onto |
|-----------------|---------------------------------------------------------|-----------|
| `max_deeplab_s` | max_deeplab_s_os16_res{641,1025}_{100k,200k,400k}_coco_train | the whole `max_deeplab_s` |
| `axial_resnet50`| max_deeplab_s_backbone_imagenet1k_strong_training_strategy (ReLU), maxs_gelu_imagenet_22k_1k_224 (GeLU) | the Axial-R50 backbone of `max_deeplab_s` or `cmt_deeplab_s` (`AxialResNet.activation`: 'relu' or 'gelu') |
| `resnet50`      | resnet50_imagenet1k                                     | the backbone of `cmt_deeplab_r50` |
| `kmax_deeplab`  | kmax_resnet50_coco_train, kmax_maxs_gelu_coco_train      | the whole `kmax_deeplab_r50` / `kmax_deeplab_axial_r50` (by the stem) |

The activation (ReLU or GeLU) is not stored in a checkpoint: the gin switch
`AxialResNet.activation` must match the weights. The MaX-DeepLab-S layout also
holds the backbone, so its backbone alone can initialise the Axial-R50 models;
so do the kMaX-DeepLab layouts (`modules='backbone'`).

Every variable of ours is mapped from exactly one checkpoint key, by these rules
(DeepLab2 name -> ours; the tensor layouts differ only where a transform says so):

Backbone (`encoder/`; ours: the `AxialResNet`):
  _stem/_conv{1,2}_bn_act, _stem/_conv3_bn     -> stem/conv{1,2,3}   (inception)
  _stem/_conv, _stem/_batch_norm               -> stem/conv1         (resnet 7x7)
  _stage{s}/_block{b}/_conv1_bn_act            -> stage{s}_block{b}/conv1
  _stage{s}/_block{b}/_conv2_bn_act            -> .../conv2
  _stage{s}/_block{b}/_conv3_bn                -> .../conv3
  _stage{s}/_block{b}/_shortcut                -> .../shortcut
  .../_conv/kernel, .../_batch_norm/{gamma,beta,moving_mean,moving_variance}
                                               -> .../conv/kernel, .../batch_norm/*
Axial attention (`.../_attention/_{height,width}_axis/`; ours
`.../{height,width}_axis/`):
  qkv_kernel [C, 2K + V], _batch_norm_qkv      -> qkv_kernel, batch_norm_qkv
  _{query,key,value}_rpe/embeddings [509, d]   -> {query,key,value}_rpe
  _batch_norm_similarity/* [3, 1, heads, 1, 1] -> batch_norm_{content,query_rpe,
      key_rpe}_similarity/* [heads]: DeepLab2 normalises the stacked terms
      (content, query-rpe, key-rpe) with one norm over (term, head); ours has one
      norm per term; split on the term axis, take [t, 0, :, 0, 0].
  _batch_norm_retrieved_output/* [2, 1, heads, 1, V/heads]
                                               -> batch_norm_retrieved_{content,
      rpe}/* [V]: split on the term axis and flatten (heads, V/heads) head-major,
      the order in which both merge the heads.

MaX-DeepLab-S pixel decoder (`encoder/`; ours: `PixelDecoder`, 1-1-1 blocks):
  _stage5_extra/_block1                        -> stride16_block1
  _decoder_stage1_extra_resized_fuse/_resized_conv_bn1 -> stride8_fuse/project0
  _decoder_stage1_extra/_block1                -> stride8_block1
  _decoder_stage2_extra_resized_fuse/_resized_conv_bn1 -> stride4_fuse/project0
  _decoder_stage2_extra/_block1                -> stride4_block1

Dual-path transformer layers (`encoder/_stage5/_block{1,2,3}_transformer`,
`encoder/_stage5_extra/_block1_transformer`; ours: the `ClusteringTransformerLayer`
after the same blocks). DeepLab2's 1x1 projections are `Conv1D` kernels
[1, C_in, C_out]; ours are dense kernels [C_in, C_out] (drop the leading axis):
  _pixel_conv1_bn_act, _memory_conv1_bn_act    -> pixel_conv1_bn_act, center_conv1_bn_act
  _pixel_qkv_conv_bn  [1, C, 2K + V]           -> pixel_{query,key,value}: columns
      [0, K), [K, 2K), [2K, 2K + V) of the kernel and of each batch-norm vector
  _memory_qkv_conv_bn                          -> center_{query,key,value}, likewise
  _memory_attention/_batch_norm_similarity [heads] -> center_attention/logit_batch_norm
  _memory_attention/_batch_norm_retrieved_value [1, heads, 1, V/heads]
                                               -> center_attention/value_batch_norm [V]
  _pixel_attention/...                         -> pixel_attention/..., likewise
  _memory_conv3_bn, _pixel_conv3_bn            -> center_conv3_bn, pixel_conv3_bn
  _memory_ffn_conv1_bn_act, _memory_ffn_conv2_bn -> ffn_conv1_bn_act, ffn_conv2_bn
  encoder/memory_feature [1, max_slots, C]     -> transformer initial_centers
      [N, C]: the first N slots (DeepLab2's `num_mask_slots` slicing)

MaX-DeepLab-S heads:
  encoder/_class_feature_extra                 -> class_head/class_feature
  transformer_class_head/_conv/kernel [1, C, K + 1] -> class_head/classifier/kernel
  transformer_class_head/_conv/bias            -> class_head/classifier/bias, with
      DeepLab2's constant no-object bias log(K * 0.9 / 0.1) added to the last
      entry (DeepLab2 adds it in `add_bias_towards_void` at every call; ours
      keeps it in the bias). Channel k is class k: DeepLab2's COCO label k + 1
      (dataset ids, void 0) is our train id k (things first in both); the last
      channel is no-object in both.
  encoder/_mask_feature_extra                  -> mask_head/mask_feature
  transformer_mask_head                        -> mask_head/mask_embedding
  pixel_space_mask_batch_norm                  -> mask_head/mask_logit_batch_norm
  pixel_space_head/conv_block/_conv1_bn_act/_depthwise/{_depthwise_conv,_batch_norm}
                                               -> pixel_embedding_head/conv_head/
                                                  {depthwise,depthwise_batch_norm}
  pixel_space_head/conv_block/_conv1_bn_act/_pointwise -> .../conv_head/pointwise
  pixel_space_head/final_conv                  -> .../conv_head/output
  pixel_space_feature_batch_norm               -> pixel_embedding_head/embedding_batch_norm

kMaX-DeepLab (ours: `KMaXDeepLab`; backbone as above, output stride 32):
  pixel_decoder/_backbone_norms/{i}/{gamma,beta} -> kmax_pixel_decoder/stride{s}_backbone_norm
  pixel_decoder/_skip_connections/{i}/_resized_conv_bn{j} -> stride{s}_fuse/project{j-1}
      (s the stride of decoder stage i + 1; j = 1 the coarse input, 2 the
      backbone's)
  pixel_decoder/_stages/{i}/_block{b}          -> stride{s}_block{b} (blocks as above)
  transformer_decoder/cluster_centers [1, N, C] -> initial_centers [N, C]
  transformer_decoder/_kmax_decoder/{l}/_block1_transformer/ -> the l-th
      `KMaXTransformerLayer` (stride{s}_layer{k}):
    _pixel_conv1_bn_act, _memory_conv1_bn_act  -> pixel_conv1_bn_act, center_conv1_bn_act
    _memory_qkv_conv_bn                        -> center_{query,key,value} (columns
                                                  as for the dual-path layers)
    _pixel_v_conv_bn                           -> pixel_value
    _memory_attention                          -> center_attention (as above)
    _memory_conv3_bn                           -> center_conv3_bn
    _kmeans_memory_batch_norm_retrieved_value  -> kmeans_value_batch_norm
    _kmeans_memory_conv3_bn                    -> kmeans_conv3_bn
    _memory_ffn_conv{1_bn_act,2_bn}            -> ffn_conv1_bn_act, ffn_conv2_bn
    _auxiliary_clustering_predictor/_<head>    -> predictor: the MaX heads below
      with a leading underscore and no center projections
  transformer_decoder/_class_embedding_projection -> heads/class_head/class_feature
  transformer_decoder/_mask_embedding_projection  -> heads/mask_head/mask_feature
  transformer_class_head, transformer_mask_head, pixel_space_* -> heads, as MaX's.

kMaX-DeepLab's training-only semantic branch (COCO; ours: the 'aspp' branch,
`semantic_decoder` and `semantic_head`; every ConvBN as above):
  semantic_decoder/_aspp/_conv_bn_act          -> semantic_decoder/aspp/pointwise
  semantic_decoder/_aspp/_aspp_conv{i}/_conv_bn_act -> .../aspp/atrous{i}
  semantic_decoder/_aspp/_aspp_pool/_conv_bn_act -> .../aspp/pooling
  semantic_decoder/_aspp/_proj_conv_bn_act     -> .../aspp/projection
  semantic_decoder/_low_level_conv{1,2}        -> .../{res3,res2}_projection
  semantic_decoder/_fusion_conv{1,2}/_conv1_bn_act/_depthwise/
      {_depthwise_conv/depthwise_kernel, _batch_norm} -> .../{res3,res2}_fusion/
      {depthwise/depthwise_kernel, depthwise_batch_norm}
  semantic_decoder/_fusion_conv{1,2}/_conv1_bn_act/_pointwise -> .../_fusion/pointwise
  semantic_head_without_last_layer/_conv1_bn_act -> semantic_head/conv_head
      (depthwise and pointwise as the fusions')
  semantic_last_layer/{kernel,bias} [.., 1 + C] -> semantic_head/conv_head/
      output/{kernel,bias} [.., C + 1]: DeepLab2 predicts one logit per COCO
      label, void (0) first; ours class k (label k + 1) at k and void last
      (channel 0 rolled to the end).
The branch is mapped only onto a kMaX model with the 'aspp' branch whose
variables exist (run once in training); otherwise its keys are skipped with
the reason (a 'pixel_decoder' head keeps its initial values).

Skipped, never mapped: `global_step` and checkpoint bookkeeping, optimizer
slots, and in the MaX-DeepLab-S layout DeepLab2's training-only auxiliary
semantic branch (the same keys: an ASPP decoder on stride 16 that ours
replaces by a head on the stride-4 decoder features).
"""
import collections
import dataclasses
import math
import re
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling import kmax_deeplab
from cmt_deeplab_tf.modeling import max_deeplab
from cmt_deeplab_tf.modeling.backbones import axial_resnet
from cmt_deeplab_tf.modeling.decoders import kmax_transformer_decoder
from cmt_deeplab_tf.modeling.decoders import semantic_decoder
from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from cmt_deeplab_tf.modeling.layers import kmeans_attention
from cmt_deeplab_tf.modeling.layers import stems

# Layouts.
MAX_DEEPLAB_S = 'max_deeplab_s'
AXIAL_RESNET50 = 'axial_resnet50'
RESNET50 = 'resnet50'
KMAX_DEEPLAB = 'kmax_deeplab'
LAYOUTS = (MAX_DEEPLAB_S, AXIAL_RESNET50, RESNET50, KMAX_DEEPLAB)
# Layouts of whole models (not only a backbone).
_WHOLE_MODELS = (MAX_DEEPLAB_S, KMAX_DEEPLAB)

# What to restore (`ExperimentConfig.init_checkpoint_modules`).
ALL = 'all'
BACKBONE = 'backbone'
ALL_BUT_CLASS_HEAD = 'all_but_class_head'
MODULES = (ALL, BACKBONE, ALL_BUT_CLASS_HEAD)

_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_MODEL_GARDEN_ENCODER = 'backbone/_encoder/'
_ENCODER = 'encoder/'
_VOID_PRIOR = 0.9  # DeepLab2 `add_bias_towards_void(void_prior_prob=0.9)`.
_BN_PARAMETERS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
_SIMILARITY_TERMS = ('content', 'query_rpe', 'key_rpe')
_RETRIEVED_TERMS = ('content', 'rpe')

# Skipped keys: (pattern, reason).
_SKIPPED = (
    (re.compile(r'^(global_step|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH)$'),
     'checkpoint bookkeeping'),
    (re.compile(r'(^optimizer/|\.OPTIMIZER_SLOT)'), 'optimizer state'),
)
# DeepLab2's training-only auxiliary semantic branch: mapped by the kMaX layout
# onto an 'aspp' semantic branch, skipped otherwise (`_semantic_skip_reason`).
_SEMANTIC_BRANCH = re.compile(
    r'^(semantic_decoder|semantic_head_without_last_layer|semantic_last_layer)/')

Transform = Callable[[np.ndarray], np.ndarray]


def _identity(value):
  return value


@dataclasses.dataclass(frozen=True)
class VariableMapping:
  """One of our variables and the checkpoint tensor it is set from."""
  variable: tf.Variable
  key: str
  transform: Transform = _identity


@dataclasses.dataclass
class ImportPlan:
  """What an import sets, skips and leaves at its initial value."""
  layout: str
  mappings: List[VariableMapping]
  skipped: Dict[str, str]          # checkpoint key -> reason
  kept_initial: List[tf.Variable]  # our variables no key is mapped to


def find_checkpoint(path: str) -> str:
  """The checkpoint prefix at `path`: a prefix, or a directory holding one.

  A directory (e.g. an extracted model-zoo archive) resolves to its latest
  checkpoint, or to its only `*.index` file.

  Raises:
    ValueError: If `path` is neither, naming it.
  """
  if tf.io.gfile.exists(path + '.index'):
    return path
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest:
      return latest
    indexes = tf.io.gfile.glob(f'{path.rstrip("/")}/*.index')
    if len(indexes) == 1:
      return indexes[0][:-len('.index')]
    raise ValueError(f'{path} holds {len(indexes)} checkpoints (*.index); '
                     'give the prefix of one.')
  raise ValueError(f'{path}: no such checkpoint (neither {path}.index nor a '
                   'directory).')


class CheckpointKeys:
  """The keys and shapes of a DeepLab2 checkpoint, without its values.

  Enough to plan an import (e.g. from `full_size_variables.json`, the key list
  of the published checkpoints); `DeepLab2Checkpoint` adds the values.
  """

  def __init__(self, stored_shapes: Dict[str, Sequence[int]], path: str):
    """Args: stored_shapes: stored key -> shape; path: names it in errors."""
    self.path = path
    self._stored = {_normalise(key): key for key in stored_shapes}
    self.shapes = {key: tuple(stored_shapes[stored])
                   for key, stored in self._stored.items()}

  @property
  def layout(self) -> str:
    return detect_layout(self.shapes, self.path)


class DeepLab2Checkpoint(CheckpointKeys):
  """A DeepLab2 (or Model Garden) checkpoint, keys normalised to DeepLab2's."""

  def __init__(self, path: str):
    """Opens the checkpoint at `path` (see `find_checkpoint`).

    Raises:
      ValueError: If `path` is not a readable checkpoint.
    """
    path = find_checkpoint(path)
    try:
      self._reader = tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as e:
      raise ValueError(f'Cannot read a checkpoint at {path}: {e}') from e
    super().__init__(self._reader.get_variable_to_shape_map(), path)

  def read(self, key: str) -> np.ndarray:
    return self._reader.get_tensor(self._stored[key])


def _normalise(stored_key):
  key = stored_key[:-len(_VALUE_SUFFIX)] if stored_key.endswith(
      _VALUE_SUFFIX) else stored_key
  position = key.find(_MODEL_GARDEN_ENCODER)
  if position >= 0:
    key = _ENCODER + key[position + len(_MODEL_GARDEN_ENCODER):]
  return key


def detect_layout(shapes: Dict[str, Tuple[int, ...]], path: str = '') -> str:
  """The layout of a checkpoint from its keys (see `LAYOUTS`).

  Raises:
    ValueError: If no known layout fits, naming the checkpoint.
  """
  if 'encoder/memory_feature' in shapes and (
      'transformer_class_head/_conv/kernel' in shapes):
    return MAX_DEEPLAB_S
  if 'transformer_decoder/cluster_centers' in shapes and (
      'transformer_class_head/_conv/kernel' in shapes):
    return KMAX_DEEPLAB
  if 'encoder/_stem/_conv/kernel' in shapes and not any(
      '/_attention/' in key for key in shapes):
    return RESNET50
  if 'encoder/_stem/_conv1_bn_act/_conv/kernel' in shapes and (
      'encoder/_stage5/_block1/_attention/_height_axis/qkv_kernel' in shapes):
    return AXIAL_RESNET50
  examples = sorted(shapes)[:5]
  raise ValueError(
      f'Checkpoint {path} has no known DeepLab2 layout ({LAYOUTS}): expected '
      "DeepLab2 keys under 'encoder/' (or Model Garden's 'backbone/_encoder/'), "
      f'got keys such as {examples}.')


# ---- Our layers -> DeepLab2 key prefixes. ----

def _relative_name(variable, layer):
  """The variable's name below `layer` (e.g. 'conv1/batch_norm/gamma')."""
  parts = variable.name.split(':')[0].split('/')
  if layer.name in parts:
    index = len(parts) - 1 - parts[::-1].index(layer.name)
    return '/'.join(parts[index + 1:])
  return parts[-1]  # A weight of the layer itself, created outside its scope.


def _own_weights(layer):
  """The weights of `layer` that none of its sublayers holds."""
  nested = {id(w) for sub in layer._flatten_layers(include_self=False)  # pylint: disable=protected-access
            for w in sub.weights}
  return [w for w in layer.weights if id(w) not in nested]


def _conv_bn_rule(name):
  """ConvBN 'conv/kernel' | 'batch_norm/<p>' -> ('_conv/kernel' | '_batch_norm/<p>')."""
  match = re.fullmatch(r'(conv/kernel|batch_norm/(\w+))', name)
  if match is None:
    return None
  if match.group(2):
    return f'_batch_norm/{match.group(2)}', _identity
  return '_conv/kernel', _identity


def _stacked(index, flatten):
  def take(value):
    if flatten:  # [terms, 1, heads, 1, depth] -> [heads * depth].
      return value[index, 0, :, 0, :].reshape(-1)
    return value[index, 0, :, 0, 0]  # [terms, 1, heads, 1, 1] -> [heads].
  return take


def _axial_attention_rule(name):
  """Ours below `{height,width}_axis/` -> DeepLab2 below `_{..}_axis/`."""
  if name in ('qkv_kernel',) or name.startswith('batch_norm_qkv/'):
    return ('_' + name if name.startswith('batch') else name), _identity
  match = re.fullmatch(r'(query|key|value)_rpe', name)
  if match:
    return f'_{name}/embeddings', _identity
  match = re.fullmatch(r'batch_norm_(\w+?)_similarity/(\w+)', name)
  if match and match.group(1) in _SIMILARITY_TERMS:
    return (f'_batch_norm_similarity/{match.group(2)}',
            _stacked(_SIMILARITY_TERMS.index(match.group(1)), flatten=False))
  match = re.fullmatch(r'batch_norm_retrieved_(\w+)/(\w+)', name)
  if match and match.group(1) in _RETRIEVED_TERMS:
    return (f'_batch_norm_retrieved_output/{match.group(2)}',
            _stacked(_RETRIEVED_TERMS.index(match.group(1)), flatten=True))
  return None


_BLOCK_PARTS = {'conv1': '_conv1_bn_act', 'conv2': '_conv2_bn_act',
                'conv3': '_conv3_bn', 'shortcut': '_shortcut'}


def _block_rule(name):
  """A residual block: ConvBNs and the two axial attentions."""
  part, _, rest = name.partition('/')
  if part in _BLOCK_PARTS:
    rule = _conv_bn_rule(rest)
    return rule and (f'{_BLOCK_PARTS[part]}/{rule[0]}', rule[1])
  if part in ('height_axis', 'width_axis'):
    rule = _axial_attention_rule(rest)
    return rule and (f'_attention/_{part}/{rule[0]}', rule[1])
  return None


def _stem_rule(stem):
  if isinstance(stem, stems.ResNetStem):
    def rule(name):  # One 7x7 ConvBN, 'conv1'.
      part, _, rest = name.partition('/')
      return _conv_bn_rule(rest) if part == 'conv1' else None
    return rule
  inception = {'conv1': '_conv1_bn_act', 'conv2': '_conv2_bn_act',
               'conv3': '_conv3_bn'}

  def rule(name):
    part, _, rest = name.partition('/')
    converted = _conv_bn_rule(rest) if part in inception else None
    return converted and (f'{inception[part]}/{converted[0]}', converted[1])
  return rule


def _squeeze_conv1d(value):
  return value[0]  # Conv1D [1, C_in, C_out] -> dense [C_in, C_out].


def _columns(start, size, squeeze):
  def take(value):
    value = value[0] if squeeze else value
    return value[..., start:start + size]
  return take


def _linear_bn_rule(prefix):
  """LinearBN 'dense/kernel' | 'batch_norm/<p>' -> DeepLab2 Conv1D + BN."""
  def rule(name):
    if name == 'dense/kernel':
      return f'{prefix}/_conv/kernel', _squeeze_conv1d
    match = re.fullmatch(r'batch_norm/(\w+)', name)
    return match and (f'{prefix}/_batch_norm/{match.group(1)}', _identity)
  return rule


def _attention_rule(prefix):
  """MultiHeadAttention norms -> DeepLab2 `AttentionOperation` norms."""
  def rule(name):
    match = re.fullmatch(r'(logit|value)_batch_norm/(\w+)', name)
    if match is None:
      return None
    if match.group(1) == 'logit':
      return f'{prefix}/_batch_norm_similarity/{match.group(2)}', _identity
    return (f'{prefix}/_batch_norm_retrieved_value/{match.group(2)}',
            lambda value: value.reshape(-1))  # [1, heads, 1, d] -> [heads * d].
  return rule


def _qkv_rule(source, columns, rest):
  """A query / key / value LinearBN from columns of a DeepLab2 qkv Conv1D."""
  start, size = columns
  if rest == 'dense/kernel':
    return f'{source}/_conv/kernel', _columns(start, size, squeeze=True)
  bn = re.fullmatch(r'batch_norm/(\w+)', rest)
  return bn and (f'{source}/_batch_norm/{bn.group(1)}',
                 _columns(start, size, squeeze=False))


def _dual_path_rule(layer):
  """A `ClusteringTransformerLayer` with `DUAL_PATH_SWITCHES`."""
  key_depth = layer.options.filters
  value_depth = 2 * key_depth
  qkv_columns = {'query': (0, key_depth), 'key': (key_depth, key_depth),
                 'value': (2 * key_depth, value_depth)}
  renames = {'pixel_conv1_bn_act': '_pixel_conv1_bn_act',
             'center_conv1_bn_act': '_memory_conv1_bn_act',
             'center_conv3_bn': '_memory_conv3_bn',
             'pixel_conv3_bn': '_pixel_conv3_bn',
             'ffn_conv1_bn_act': '_memory_ffn_conv1_bn_act',
             'ffn_conv2_bn': '_memory_ffn_conv2_bn'}
  attentions = {'center_attention': '_memory_attention',
                'pixel_attention': '_pixel_attention'}

  def rule(name):
    part, _, rest = name.partition('/')
    if part in renames:
      return _linear_bn_rule(renames[part])(rest)
    if part in attentions:
      return _attention_rule(attentions[part])(rest)
    match = re.fullmatch(r'(pixel|center)_(query|key|value)', part)
    if match is None:
      return None
    source = '_pixel_qkv_conv_bn' if match.group(1) == 'pixel' else (
        '_memory_qkv_conv_bn')
    return _qkv_rule(source, qkv_columns[match.group(2)], rest)
  return rule


# DeepLab2 names of the heads' parts: MaX-DeepLab-S's (`checkpoint_items`).
_MAX_HEAD_NAMES = dict(
    class_feature='encoder/_class_feature_extra',
    class_head='transformer_class_head',
    mask_feature='encoder/_mask_feature_extra',
    mask_head='transformer_mask_head',
    mask_norm='pixel_space_mask_batch_norm',
    pixel_head='pixel_space_head',
    pixel_norm='pixel_space_feature_batch_norm')
# kMaX-DeepLab's final heads: the center projections are the decoder's.
_KMAX_HEAD_NAMES = dict(
    _MAX_HEAD_NAMES,
    class_feature='transformer_decoder/_class_embedding_projection',
    mask_feature='transformer_decoder/_mask_embedding_projection')


def _auxiliary_head_names(prefix):
  """A kMaX layer's predictor: attributes of a DeepLab2 `MaXDeepLab` head."""
  return {part: f'{prefix}_{name}' for part, name in _MAX_HEAD_NAMES.items()
          if part not in ('class_feature', 'mask_feature')}


def _head_rules(heads, num_classes, names=None):
  """(layer, prefix, rule) of mask-transformer heads; `names`: DeepLab2's."""
  names = names or _MAX_HEAD_NAMES
  void_bias = math.log(num_classes * _VOID_PRIOR / (1.0 - _VOID_PRIOR))

  def add_void_bias(value):
    value = value.copy()
    value[-1] += void_bias
    return value

  def class_rule(name):
    part, _, rest = name.partition('/')
    if part == 'class_feature' and 'class_feature' in names:
      return _linear_bn_rule(names['class_feature'])(rest)
    if part == 'classifier' and rest == 'kernel':
      return f'{names["class_head"]}/_conv/kernel', _squeeze_conv1d
    if part == 'classifier' and rest == 'bias':
      return f'{names["class_head"]}/_conv/bias', add_void_bias
    return None

  def mask_rule(name):
    part, _, rest = name.partition('/')
    if part == 'mask_feature' and 'mask_feature' in names:
      return _linear_bn_rule(names['mask_feature'])(rest)
    if part == 'mask_embedding':
      return _linear_bn_rule(names['mask_head'])(rest)
    match = re.fullmatch(r'mask_logit_batch_norm/(\w+)', name)
    return match and (f'{names["mask_norm"]}/{match.group(1)}', _identity)

  pixel_head = names['pixel_head']
  head_rule = _conv_head_rule(f'{pixel_head}/conv_block/_conv1_bn_act',
                              f'{pixel_head}/final_conv')

  def pixel_rule(name):
    match = re.fullmatch(r'embedding_batch_norm/(\w+)', name)
    if match:
      return f'{names["pixel_norm"]}/{match.group(1)}', _identity
    part, _, rest = name.partition('/')
    return head_rule(rest) if part == 'conv_head' else None

  return [(heads.class_head, '', class_rule), (heads.mask_head, '', mask_rule),
          (heads.pixel_embedding_head, '', pixel_rule)]


def _separable_rule(prefix):
  """`SeparableConvBN` -> DeepLab2's `SeparableConv2DSame` at `prefix`."""
  def rule(name):
    part, _, rest = name.partition('/')
    if part == 'depthwise' and rest == 'depthwise_kernel':
      return f'{prefix}/_depthwise/_depthwise_conv/depthwise_kernel', _identity
    match = re.fullmatch(r'depthwise_batch_norm/(\w+)', name)
    if match:
      return f'{prefix}/_depthwise/_batch_norm/{match.group(1)}', _identity
    converted = _conv_bn_rule(rest) if part == 'pointwise' else None
    return converted and (f'{prefix}/_pointwise/{converted[0]}', converted[1])
  return rule


def _conv_head_rule(separable, final, final_transform=_identity):
  """`SeparableConvHead` -> DeepLab2's `PanopticDeepLabSingleHead` parts."""
  separable_rule = _separable_rule(separable)

  def rule(name):
    match = re.fullmatch(r'output/(kernel|bias)', name)
    if match:
      return f'{final}/{match.group(1)}', final_transform
    return separable_rule(name)
  return rule


def _void_last(value):
  """DeepLab2's semantic logits [..., 1 + C] (void, label 0, first) -> ours
  [..., C + 1] (class k = label k + 1, void last)."""
  return np.roll(value, -1, axis=-1)


# Our ASPP's ConvBNs -> DeepLab2's `ASPP` attributes.
_ASPP_PARTS = {'pointwise': '_conv_bn_act', 'pooling': '_aspp_pool/_conv_bn_act',
               'projection': '_proj_conv_bn_act'}


def _semantic_decoder_rule(name):
  """`SemanticDecoder` -> DeepLab2's `semantic_decoder/`
  (`PanopticDeepLabSingleDecoder`); low-level endpoint i (RES3, RES2) is
  DeepLab2's `_low_level_conv{i + 1}` / `_fusion_conv{i + 1}`."""
  part, _, rest = name.partition('/')
  if part == 'aspp':
    branch, _, rest = rest.partition('/')
    atrous = re.fullmatch(r'atrous(\d)', branch)
    target = (f'_aspp_conv{atrous.group(1)}/_conv_bn_act' if atrous else
              _ASPP_PARTS.get(branch))
    converted = target and _conv_bn_rule(rest)
    return converted and (f'semantic_decoder/_aspp/{target}/{converted[0]}',
                          converted[1])
  for index, endpoint in enumerate(semantic_decoder.LOW_LEVEL, start=1):
    if part == f'{endpoint}_projection':
      converted = _conv_bn_rule(rest)
      return converted and (
          f'semantic_decoder/_low_level_conv{index}/{converted[0]}',
          converted[1])
    if part == f'{endpoint}_fusion':
      return _separable_rule(
          f'semantic_decoder/_fusion_conv{index}/_conv1_bn_act')(rest)
  return None


def _semantic_units(model):
  """(layer, rule) of kMaX's 'aspp' semantic branch: DeepLab2's
  `semantic_decoder/`, `semantic_head_without_last_layer/` and
  `semantic_last_layer/` (its void logit moved last)."""
  head_rule = _conv_head_rule('semantic_head_without_last_layer/_conv1_bn_act',
                              'semantic_last_layer', _void_last)

  def semantic_head_rule(name):
    part, _, rest = name.partition('/')
    return head_rule(rest) if part == 'conv_head' else None
  return [(model.semantic_decoder, _semantic_decoder_rule),
          (model.semantic_head, semantic_head_rule)]


def _prefixed(prefix, rule):
  def prefixed_rule(name):
    converted = rule(name)
    return converted and (prefix + converted[0], converted[1])
  return prefixed_rule


def backbone_units(backbone):
  """(layer, rule) of an `AxialResNet`: every rule gives 'encoder/...' keys."""
  units = [(backbone.stem, _prefixed('encoder/_stem/', _stem_rule(
      backbone.stem)))]
  for stage_index, stage_blocks in enumerate(backbone.stages):
    for block_index, block in enumerate(stage_blocks):
      prefix = (f'encoder/_stage{stage_index + axial_resnet.FIRST_STAGE}/'
                f'_block{block_index + 1}/')
      units.append((block, _prefixed(prefix, _block_rule)))
  return units


def _max_deeplab_units(model, num_classes):
  """(layer, rule) of MaX-DeepLab-S beyond its backbone."""
  decoder = model.pixel_decoder
  if tuple(decoder.num_blocks) != max_deeplab.MAX_DECODER_BLOCKS:
    raise ValueError(
        'The MaX-DeepLab-S layout maps onto a pixel decoder with blocks '
        f'{max_deeplab.MAX_DECODER_BLOCKS}, got {tuple(decoder.num_blocks)}; '
        "import only its backbone (modules='backbone') into other models.")
  stage_prefixes = ('encoder/_stage5_extra/_block1/',
                    'encoder/_decoder_stage1_extra/_block1/',
                    'encoder/_decoder_stage2_extra/_block1/')
  units = [(stage[0], _prefixed(prefix, _block_rule))
           for stage, prefix in zip(decoder.stages, stage_prefixes)]
  for index, fuse in enumerate(decoder.fuses[1:], start=1):
    def fuse_rule(name, index=index):
      match = re.fullmatch(r'project(\d)/(.*)', name)
      rule = match and _conv_bn_rule(match.group(2))
      return rule and (
          f'encoder/_decoder_stage{index}_extra_resized_fuse/'
          f'_resized_conv_bn{int(match.group(1)) + 1}/{rule[0]}', rule[1])
    units.append((fuse, fuse_rule))
  transformer = model.transformer
  locations = max_deeplab.max_deeplab_s_locations()
  if list(transformer.locations) != locations:
    raise ValueError('The MaX-DeepLab-S layout maps onto dual-path layers at '
                     f'{locations}, got {list(transformer.locations)}.')
  prefixes = [f'encoder/_stage5/_block{b}_transformer/' for b in (1, 2, 3)]
  prefixes.append('encoder/_stage5_extra/_block1_transformer/')
  for location, prefix in zip(locations, prefixes):
    layer = transformer.transformer_layers[location]
    units.append((layer, _prefixed(prefix, _dual_path_rule(layer))))
  num_clusters = transformer.num_clusters

  def centers_rule(name):
    if name != 'initial_centers':
      return None
    return 'encoder/memory_feature', lambda value: value[0, :num_clusters]
  units.append((transformer, centers_rule))
  units.extend((layer, rule)
               for layer, _, rule in _head_rules(model.heads, num_classes))
  return units


def _kmax_layer_rule(layer):
  """A `KMaXTransformerLayer` without its predictor."""
  key_depth = layer.filters
  qkv_columns = {'center_query': (0, key_depth),
                 'center_key': (key_depth, key_depth),
                 'center_value': (2 * key_depth, 2 * key_depth)}
  renames = {'pixel_conv1_bn_act': '_pixel_conv1_bn_act',
             'center_conv1_bn_act': '_memory_conv1_bn_act',
             'pixel_value': '_pixel_v_conv_bn',
             'center_conv3_bn': '_memory_conv3_bn',
             'kmeans_conv3_bn': '_kmeans_memory_conv3_bn',
             'ffn_conv1_bn_act': '_memory_ffn_conv1_bn_act',
             'ffn_conv2_bn': '_memory_ffn_conv2_bn'}

  def rule(name):
    part, _, rest = name.partition('/')
    if part in renames:
      return _linear_bn_rule(renames[part])(rest)
    if part == 'center_attention':
      return _attention_rule('_memory_attention')(rest)
    if part in qkv_columns:
      return _qkv_rule('_memory_qkv_conv_bn', qkv_columns[part], rest)
    if part == 'kmeans_value_batch_norm':
      return (f'_kmeans_memory_batch_norm_retrieved_value/{rest}', _identity)
    return None
  return rule


def _kmax_deeplab_units(model, num_classes):
  """(layer, rule) of kMaX-DeepLab beyond its backbone."""
  if not isinstance(model, kmax_deeplab.KMaXDeepLab):
    raise ValueError(f'The {KMAX_DEEPLAB} layout maps onto a kMaX-DeepLab '
                     f'model (kmax_deeplab_r50 / kmax_deeplab_axial_r50); '
                     f"{model.name} is not one: import only its backbone "
                     "(modules='backbone').")
  decoder = model.pixel_decoder
  units = []
  for index, norm in enumerate(decoder.norms):
    units.append((norm, _prefixed(f'pixel_decoder/_backbone_norms/{index}/',
                                  lambda name: (name, _identity))))
  for index, stage in enumerate(decoder.stages):
    units.extend(
        (block, _prefixed(f'pixel_decoder/_stages/{index}/_block{b + 1}/',
                          _block_rule))
        for b, block in enumerate(stage))
  for index, fuse in enumerate(decoder.fuses):
    def fuse_rule(name, index=index):
      match = re.fullmatch(r'project(\d)/(.*)', name)
      rule = match and _conv_bn_rule(match.group(2))
      return rule and (
          f'pixel_decoder/_skip_connections/{index}/'
          f'_resized_conv_bn{int(match.group(1)) + 1}/{rule[0]}', rule[1])
    units.append((fuse, fuse_rule))
  transformer = model.transformer
  num_clusters = transformer.num_clusters

  def centers_rule(name):
    if name != 'initial_centers':
      return None
    return ('transformer_decoder/cluster_centers',
            lambda value: value[0, :num_clusters])
  units.append((transformer, centers_rule))
  for index, layer in enumerate(transformer.transformer_layers):
    prefix = f'transformer_decoder/_kmax_decoder/{index}/_block1_transformer/'
    units.append((layer, _prefixed(prefix, _kmax_layer_rule(layer))))
    names = _auxiliary_head_names(prefix + '_auxiliary_clustering_predictor/')
    units.extend((head, rule) for head, _, rule in _head_rules(
        layer.predictor, num_classes, names))
  units.extend((head, rule) for head, _, rule in _head_rules(
      model.heads, num_classes, _KMAX_HEAD_NAMES))
  if model.semantic_decoder is not None:
    units.extend(_semantic_units(model))
  return units


def _unit_variables(layer):
  """A unit's variables: a decoder's own (its layers are units of their own),
  a k-means layer's without its predictor's, any other layer's all."""
  if isinstance(layer, (transformer_decoder.TransformerDecoder,
                        kmax_transformer_decoder.KMaXTransformerDecoder)):
    return _own_weights(layer)
  if isinstance(layer, kmeans_attention.KMaXTransformerLayer):
    predictor = {id(w) for w in layer.predictor.weights}
    return [w for w in layer.weights if id(w) not in predictor]
  return layer.weights


def _plan_units(units, checkpoint, layout):
  """Mappings of every unit variable that a rule maps to a stored key."""
  mappings, unmatched = [], []
  for layer, rule in units:
    variables = _unit_variables(layer)
    for variable in variables:
      converted = rule(_relative_name(variable, layer))
      if converted is None or converted[0] not in checkpoint.shapes:
        unmatched.append((variable, converted and converted[0]))
        continue
      key, transform = converted
      mappings.append(VariableMapping(variable, key, transform))
  if unmatched:
    variable, key = unmatched[0]
    raise ValueError(
        f'{len(unmatched)} variables of ours have no key in the {layout} '
        f'checkpoint {checkpoint.path}, e.g. {variable.name} '
        f'(looked for {key!r}).')
  return mappings


def plan_import(model, checkpoint: CheckpointKeys,
                modules: str = ALL) -> ImportPlan:
  """Maps a DeepLab2 checkpoint onto `model` (see the module docstring).

  Args:
    model: A `CMTDeepLab` built by `build_model`, or a bare `AxialResNet`;
      all its variables must exist (call it once).
    checkpoint: The opened checkpoint (or only its keys and shapes).
    modules: 'all' (everything the layout holds), 'backbone' (the backbone
      only) or 'all_but_class_head' (all but the class-logit layer, which
      keeps its initial value: fine-tuning on another class set).

  Returns:
    The `ImportPlan`: every variable mapping, the skipped checkpoint keys with
    their reason, and our variables that keep their initial values.

  Raises:
    ValueError: On an unknown layout or `modules`, a model the layout does not
      fit, a variable of ours whose key is missing, a shape mismatch, or a
      checkpoint key that maps nowhere and is not skippable; each names the
      variable or key.
  """
  if modules not in MODULES:
    raise ValueError(f'modules={modules!r}: expected one of {MODULES}.')
  layout = checkpoint.layout
  backbone = model if isinstance(model, axial_resnet.AxialResNet) else (
      getattr(model, 'backbone', None))
  if not isinstance(backbone, axial_resnet.AxialResNet):
    raise ValueError(f'The {layout} layout maps onto a model with one '
                     f'AxialResNet backbone; {model.name} has none.')
  _check_stem(backbone, layout, checkpoint.path)
  units = backbone_units(backbone)
  whole = layout in _WHOLE_MODELS and modules != BACKBONE and (
      backbone is not model)
  skip_class_head = modules == ALL_BUT_CLASS_HEAD
  if whole:
    num_classes = checkpoint.shapes['transformer_class_head/_conv/bias'][0] - 1
    units += (_kmax_deeplab_units if layout == KMAX_DEEPLAB else
              _max_deeplab_units)(model, num_classes)
  mappings = _plan_units(units, checkpoint, layout)
  if skip_class_head:
    mappings = [a for a in mappings if not _is_class_logit_key(a.key)]
  _check_shapes(mappings, checkpoint, whole and not skip_class_head)
  mapped = {a.key for a in mappings}
  skipped = {}
  unmapped = []
  for key in sorted(checkpoint.shapes):
    if key in mapped:
      continue
    reason = _skip_reason(key, layout, modules, whole, model)
    if reason is None:
      unmapped.append(key)
    else:
      skipped[key] = reason
  if unmapped:
    raise ValueError(
        f'{len(unmapped)} inference variables of the {layout} checkpoint '
        f'{checkpoint.path} map onto no variable of {model.name}, e.g. '
        f'{unmapped[:3]}.')
  mapped_ids = {id(a.variable) for a in mappings}
  kept = [v for v in model.variables if id(v) not in mapped_ids]
  return ImportPlan(layout, mappings, skipped, kept)


def _is_class_logit_key(key):
  """A class-logit layer: the final one, a kMaX layer's predictor's, or the
  semantic branch's last layer."""
  return re.search(r'(^|/)_?transformer_class_head/|^semantic_last_layer/',
                   key) is not None


def _check_stem(backbone, layout, path):
  resnet_stem = isinstance(backbone.stem, stems.ResNetStem)
  if layout == KMAX_DEEPLAB:  # Either stem; the checkpoint's keys tell which.
    return
  if resnet_stem != (layout == RESNET50):
    want = 'ResNet (7x7)' if layout == RESNET50 else 'inception'
    raise ValueError(
        f'The {layout} checkpoint {path} has the {want} stem; the backbone '
        f'{backbone.name} has {type(backbone.stem).__name__}.')


def _skip_reason(key, layout, modules, whole, model):
  for pattern, reason in _SKIPPED:
    if pattern.search(key):
      return reason
  if layout in _WHOLE_MODELS and not whole:
    return 'outside the backbone (only the backbone is restored)'
  semantic = _SEMANTIC_BRANCH.search(key) and _semantic_skip_reason(layout,
                                                                    model)
  if semantic:
    return semantic
  if modules == ALL_BUT_CLASS_HEAD and _is_class_logit_key(key):
    return 'the class-logit layer (all_but_class_head: re-initialised)'
  return None


def _semantic_skip_reason(layout, model):
  """Why DeepLab2's training-only semantic branch is not mapped, or None
  (an error) if it should have been."""
  branch = "DeepLab2's training-only auxiliary semantic branch"
  if layout != KMAX_DEEPLAB:
    return (f'{branch} (ours reads the stride-4 pixel-decoder features: '
            'MaX-DeepLab-S has no ASPP semantic decoder)')
  if model.semantic_decoder is None:
    return (f"{branch} (the model's kMaX semantic head is "
            f"'{kmax_deeplab.PIXEL_DECODER}', not '{kmax_deeplab.ASPP}')")
  if not model.semantic_decoder.weights:
    return f'{branch} (not built: the model has run only at inference)'
  return None


def _check_shapes(mappings, checkpoint, class_count_matters):
  """Raises on the first mapping whose transformed shape differs."""
  for mapping in mappings:
    stored = checkpoint.shapes[mapping.key]
    shape = _transformed_shape(mapping, stored)
    if shape != tuple(mapping.variable.shape):
      hint = ''
      if class_count_matters and _is_class_logit_key(mapping.key):
        hint = (" The class counts differ: use init_checkpoint_modules="
                "'all_but_class_head' to re-initialise the class-logit layer.")
      elif len(shape) == len(mapping.variable.shape) and mapping.variable.shape[-1]:
        hint = (f' The checkpoint\'s layer is {shape[-1] / mapping.variable.shape[-1]:g}'
                'x as wide as the model\'s: it was trained at another width; set '
                'build_model.width_multiplier to its width.')
      raise ValueError(
          f'Shape mismatch: {mapping.variable.name} '
          f'{tuple(mapping.variable.shape)} <- {mapping.key} {stored} '
          f'(as {shape}) in {checkpoint.path}.{hint}')


def _transformed_shape(mapping, stored_shape):
  """The shape of `transform(tensor)` for a tensor of `stored_shape`."""
  return tuple(mapping.transform(np.zeros(stored_shape, np.float32)).shape)


def apply_plan(plan: ImportPlan, checkpoint: DeepLab2Checkpoint) -> None:
  """Assigns every planned variable its (transformed) checkpoint tensor."""
  cache = {}
  for mapping in plan.mappings:
    if mapping.key not in cache:
      cache[mapping.key] = checkpoint.read(mapping.key)
    value = mapping.transform(cache[mapping.key])
    mapping.variable.assign(value.astype(
        mapping.variable.dtype.as_numpy_dtype))


def _top_module(variable):
  """The model's direct sublayer holding `variable` (e.g. 'semantic_head')."""
  parts = variable.name.split(':')[0].split('/')
  return parts[1] if len(parts) > 2 else parts[0]


def summary(plan: ImportPlan, verbose: bool = False) -> str:
  """A human-readable account of an import.

  Counts the mapped variables, the skipped keys per reason and, per top module
  of the model, the variables (and parameters) that keep their initial values;
  `verbose` also lists every mapped variable, skipped key and initial variable.
  """
  reasons = collections.defaultdict(list)
  for key, reason in plan.skipped.items():
    reasons[reason].append(key)
  lines = [f'Layout {plan.layout}: mapped {len(plan.mappings)} variables.']
  if verbose:
    lines.extend(f'  mapped  {m.key} -> {m.variable.name}'
                 for m in plan.mappings)
  for reason, keys in sorted(reasons.items()):
    lines.append(f'Skipped {len(keys)} keys ({reason}).')
    if verbose:
      lines.extend(f'  skipped {key}' for key in keys)
  lines.append(f'Kept initial values: {len(plan.kept_initial)} variables.')
  modules = collections.defaultdict(list)
  for variable in plan.kept_initial:
    modules[_top_module(variable)].append(variable)
  for module, variables in sorted(modules.items()):
    parameters = sum(int(np.prod(v.shape)) for v in variables)
    lines.append(f'  {module}: {len(variables)} variables, {parameters:,} '
                 'parameters')
    if verbose:
      lines.extend(f'    initial {v.name}' for v in variables)
  if not verbose and (plan.mappings or plan.skipped or plan.kept_initial):
    lines.append('(--verbose lists every variable and key.)')
  return '\n'.join(lines)
