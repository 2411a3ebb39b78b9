"""The Clustering Mask Transformer (CMT) layer, and MaX-DeepLab's dual-path layer.

A CMT layer [1] treats the object queries as cluster centers and alternates a
pixel-cluster assignment, a cluster-center update and a pixel-feature update.
For one image with pixel features P [HW, Cp] (a residual block's output before
its ReLU, as in DeepLab2's dual-path layer) and centers C [N, Cc], the plain
implementation computes, in this order (each step is marked `# (Sk)` on its
line in `ClusteringTransformerLayer.call` and the methods named here):

  (S1) coordinate features      P~ = [ReLU(P), y, x], (y, x) in [-1, 1]
                                `_pixel_inputs`,
                                `reference_mask.coordinate_features`
       projections              K_p, V_p = LinearBN(ReLU(LinearBN(P~)));
                                Q_c, K_c, V_c likewise from C   (`call`)
  (S2) reference-mask prior     log r_n(p) = log sigmoid(g_n(p)), g_n the
                                Gaussian of center n  `_assignment_bias`;
                                `reference_mask.log_reference_prior`
  (S3) residual assignment      L = BN_h(Q_c K_p^T) + L_prev + log r,
                                L_prev the previous layer's head-mean logits
                                resized to this layer's grid
                                `_assignment_bias`, `Assignment.__init__`
  (S4) assignment softmax       A = softmax over the N clusters of L,
                                [heads, N, HW]   `Assignment.__init__`
  (S5) clustering update        U_clu = ReLU(BN(A V_p))  `_clustering_update`,
                                `Assignment.centers_from_pixels`
  (S6) cross-attention update   U_att = ReLU(BN(softmax over [pixels; centers]
                                of BN_h(Q_c [K_p; K_c]^T) [V_p; V_c]))
                                `_attention_update`
  (S5k) k-means update          U_km = BN(one_hot(argmax_N mean_h L)^T V_p),
        (rule 'kmeans')         kMaX-DeepLab's hard assignment [3]
                                `_kmeans_update`,
                                `kmeans_attention.kmeans_update`
       center update            C' = ReLU(C + LinearBN(U_clu)
                                          + LinearBN(U_att)) (+ the
                                LinearBN(U_km) of 'kmeans'),
                                C'' = ReLU(C' + FFN(C'))   (`call`)
  (S7) pixel update             P' = P + LinearBN(ReLU(BN(A^T V_c))), left
                                unactivated for the next block's ReLU
                                `Assignment.pixels_from_centers`,
                                `_update_pixel_features`

BN_h is a batch norm per head, BN of the retrieved values one per channel
(DeepLab2's `AttentionOperation`; `attention.MultiHeadAttention`); LinearBN is
a 1x1 projection with a batch norm (`linear_bn.LinearBN`). The clustering
update and the cross-attention are the paper's "combined" center update; the
assignment's softmax over clusters is "the same normalisation as the final
mask prediction"; the pixel update is its "frequent pixel update"
(supplement Sec. 2).

The layer computes with the classes and functions of an `Implementation`:
`PLAIN_IMPLEMENTATION` (the default here) runs the equations above as written;
a faster set with the same variables (`fast_path`) is chosen from outside, by
name, through `cmt_implementations` (the models use `TransformerDecoder.
implementation`), so this module does not know it.

Every mechanism is an option of `LayerOptions` (gin:
`ClusteringTransformerLayer.<option>`), written once there. The center update is
a sum of named rules, `center_update='clustering+attention'` (S5 + S6; a rule is
one method of the layer and one entry of `_CENTER_UPDATES`); 'kmeans' (S5k)
replaces the clustering update's softmax over clusters by kMaX-DeepLab's
argmax, with the same functions as `kmeans_attention.KMaXTransformerLayer`. With
`center_update='attention'`, `use_assignment_residual`,
`pixel_update_from_assignment`, `use_coordinate_features` off and
`reference_mask=None` (see `DUAL_PATH_SWITCHES`), the layer computes exactly MaX-DeepLab's dual-path transformer layer [2]
(DeepLab2 `DualPathTransformerLayer`): memory -> [pixel; memory] attention with one
softmax, FFN, and pixel -> memory attention.

Widths follow DeepLab2: bottleneck = 2 * filters, keys = filters, values =
2 * filters, 8 heads, FFN 2048, zero-initialised last BN of every residual branch.

[1] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
[2] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
[3] k-means Mask Transformer, Yu et al., ECCV 2022.
"""
import dataclasses
from typing import Callable, Optional, Tuple

import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import attention
from cmt_deeplab_tf.modeling.layers import drop_path
from cmt_deeplab_tf.modeling.layers import kmeans_attention
from cmt_deeplab_tf.modeling.layers import linear_bn
from cmt_deeplab_tf.modeling.layers import normalization
from cmt_deeplab_tf.modeling.layers import reference_mask as reference_mask_lib
from cmt_deeplab_tf.modeling.layers import resize

# Keys of the dict a layer returns.
PIXELS = 'pixels'                  # [B, H, W, Cp]
CENTERS = 'centers'                # [B, N, Cc]
ASSIGNMENT_LOGITS = 'assignment_logits'    # float32 [B, H, W, N], head mean.
REFERENCE_PARAMETERS = 'reference_parameters'  # float32 [B, N, 5].
CLUSTERING_MAP = 'clustering_map'  # float32 [B, H, W, N], softmax over N.
ATTENTION_MAP = 'attention_map'    # float32 [B, H, W, N], softmax over pixels.

# Center-update rules (`LayerOptions.center_update`, joined by '+'), each a
# method of the layer returning an update [B, N, Cc] (see `_CENTER_UPDATES`).
CLUSTERING = 'clustering'  # (S5) the assignment gathers pixel values.
ATTENTION = 'attention'    # (S6) MaX-DeepLab's cross-attention over pixels.
KMEANS = 'kmeans'          # (S5k) kMaX-DeepLab's hard (argmax) clustering.

# The option values that turn a CMT layer into MaX-DeepLab's dual-path layer.
DUAL_PATH_SWITCHES = dict(
    center_update=ATTENTION,
    use_center_self_attention=True,
    use_assignment_residual=False,
    update_pixels=True,
    pixel_update_from_assignment=False,
    reference_mask=None,
    use_coordinate_features=False)

_REFERENCE_MASKS = (None, reference_mask_lib.GAUSSIAN)


def _flatten_pixels(pixels):
  """[B, H, W, C] -> [B, HW, C]."""
  shape = tf.shape(pixels)
  return tf.reshape(pixels, [shape[0], shape[1] * shape[2], pixels.shape[-1]])


def _centers_by_pixels_to_map(centers_by_pixels, height, width):
  """[B, N, HW] -> [B, H, W, N]."""
  shape = tf.shape(centers_by_pixels)
  return tf.transpose(
      tf.reshape(centers_by_pixels, [shape[0], shape[1], height, width]),
      [0, 2, 3, 1])


class Assignment:
  """The pixel-cluster assignment A [B, heads, N, HW], as the paper writes it.

  The centers query the pixels and the softmax runs over the queries, the N
  clusters (S3, S4). A faster implementation may hold its transpose, with the
  same interface. The clustering attention is built with `SOFTMAX_OVER`.
  """

  SOFTMAX_OVER = attention.SOFTMAX_OVER_QUERIES

  def __init__(self, clustering, center_query, pixel_key, bias, training):
    """Computes the assignment.

    Args:
      clustering: The layer's clustering `MultiHeadAttention`.
      center_query: [B, N, Dk] center queries Q_c.
      pixel_key: [B, HW, Dk] pixel keys K_p.
      bias: None or float32 [B, H, W, N] additive assignment logits (the
        residual L_prev and the log reference prior).
      training: Training mode.
    """
    if bias is not None:
      shape = tf.shape(bias)
      bias = tf.transpose(tf.reshape(bias, [shape[0], 1, -1, shape[3]]),
                          [0, 1, 3, 2])
    # (S3) L = BN_h(Q_c K_p^T) + bias; (S4) A = softmax over the N clusters.
    self._weights, self._mean_logits = clustering.attend(
        center_query, pixel_key, bias, training=training)

  def logits_map(self, height, width):
    """Head-mean assignment logits, float32 [B, H, W, N]."""
    return _centers_by_pixels_to_map(self._mean_logits, height, width)

  def probability_map(self, height, width):
    """Head-mean assignment, float32 [B, H, W, N] (sums to one over N)."""
    return _centers_by_pixels_to_map(attention.mean_over_heads(self._weights),
                                     height, width)

  def centers_from_pixels(self, attention_layer, pixel_value, training):
    """(S5) ReLU(BN(A V_p)), [B, N, Dv]: centers gather their pixels."""
    return attention_layer.retrieve(self._weights, pixel_value,
                                    training=training)

  def pixels_from_centers(self, attention_layer, center_value, training):
    """(S7) ReLU(BN(A^T V_c)), [B, HW, Dv]: pixels read their centers."""
    return attention_layer.retrieve(self._weights, center_value,
                                    training=training, transpose_weights=True)


@dataclasses.dataclass(frozen=True)
class Implementation:
  """The classes and functions a CMT layer computes with.

  Every implementation computes the same outputs with the same variables
  (names and shapes), so they are interchangeable on one checkpoint.

  Attributes:
    name: Its name in `cmt_implementations`.
    linear_bn: A `linear_bn.LinearBN` class (a list of inputs is projected as
      their concatenation).
    attention: An `attention.MultiHeadAttention` class.
    assignment: A class with `Assignment`'s interface.
    log_reference_prior: `reference_mask.log_reference_prior` or a function
      computing the same.
  """
  name: str
  linear_bn: type
  attention: type
  assignment: type
  log_reference_prior: Callable


PLAIN_IMPLEMENTATION = Implementation(
    'plain', linear_bn.LinearBN, attention.MultiHeadAttention, Assignment,
    reference_mask_lib.log_reference_prior)


# Set by `TransformerDecoder` from its own options (one place per knob):
# binding them here is an error at parse time.
_SET_BY_THE_DECODER = ('filters', 'center_channels', 'num_heads',
                       'feed_forward_channels', 'drop_path_rate')


@gin.configurable('ClusteringTransformerLayer', denylist=_SET_BY_THE_DECODER)
@dataclasses.dataclass(frozen=True)
class LayerOptions:
  """The options of one CMT layer (gin: `ClusteringTransformerLayer.<option>`).

  Attributes:
    filters: Base width; the bottleneck has 2 * filters channels, keys
      filters, values 2 * filters (DeepLab2's MaX-DeepLab defaults).
    center_channels: Width of the cluster centers (MaX-DeepLab's memory, 256).
    num_heads: Number of attention heads.
    feed_forward_channels: Hidden width of the center FFN; 0 disables it.
    center_update: The center-update rules, joined by '+' and summed:
      'clustering' (S5, pixel values aggregated by the assignment, softmax
      over clusters), 'attention' (S6, cross-attention over the pixels,
      softmax over pixels, as MaX-DeepLab) and 'kmeans' (S5k, each pixel's
      value to the center of its largest assignment logit, as kMaX-DeepLab).
      CMT: 'clustering+attention'.
    use_center_self_attention: Centers also attend to centers (their keys
      join the cross-attention's softmax, as MaX-DeepLab's memory attention;
      alone if the update has no 'attention').
    use_assignment_residual: Add the previous layer's assignment logits to
      this layer's (resized to this layer's resolution).
    update_pixels: Update pixel features from the centers.
    pixel_update_from_assignment: Pixels retrieve center values with the
      clustering assignment (CMT); otherwise with their own pixel -> center
      attention (MaX-DeepLab).
    reference_mask: 'gaussian' (each center predicts a 2-D Gaussian reference
      mask whose log-sigmoid biases the assignment) or None.
    use_coordinate_features: Concatenate (y, x) coordinates to the pixel
      features before their projection (coordinate convolution).
    drop_path_rate: Drop-path rate of every residual branch.
  """
  filters: int = 128
  center_channels: int = 256
  num_heads: int = 8
  feed_forward_channels: int = 2048
  center_update: str = f'{CLUSTERING}+{ATTENTION}'
  use_center_self_attention: bool = True
  use_assignment_residual: bool = True
  update_pixels: bool = True
  pixel_update_from_assignment: bool = True
  reference_mask: Optional[str] = reference_mask_lib.GAUSSIAN
  use_coordinate_features: bool = True
  drop_path_rate: float = 0.0

  def __post_init__(self):
    """Checks the options.

    Raises:
      ValueError: On an unknown or repeated center-update rule, an unknown
        `reference_mask`, or `filters` not divisible by `num_heads`.
    """
    rules = self.center_update.split('+')
    if len(set(rules)) != len(rules) or not set(rules) <= set(_CENTER_UPDATES):
      raise ValueError(
          'ClusteringTransformerLayer.center_update must join distinct rules '
          f"of {tuple(_CENTER_UPDATES)} with '+', got {self.center_update!r}.")
    if self.reference_mask not in _REFERENCE_MASKS:
      raise ValueError('ClusteringTransformerLayer.reference_mask must be one '
                       f'of {_REFERENCE_MASKS}, got {self.reference_mask!r}.')
    if self.filters % self.num_heads:
      raise ValueError(f'filters ({self.filters}) must be divisible by '
                       f'num_heads ({self.num_heads}).')

  @property
  def center_update_rules(self) -> Tuple[str, ...]:
    """The rules of `center_update`, in the order their updates are summed."""
    rules = self.center_update.split('+')
    return tuple(rule for rule in _CENTER_UPDATES if rule in rules)

  @property
  def computes_assignment(self) -> bool:
    """Whether the layer computes the pixel-cluster assignment."""
    return (CLUSTERING in self.center_update_rules or
            KMEANS in self.center_update_rules or
            self.use_assignment_residual or self.reference_mask is not None or
            (self.update_pixels and self.pixel_update_from_assignment))

  @property
  def uses_center_attention(self) -> bool:
    """Whether centers attend (to pixels and / or to centers)."""
    return (ATTENTION in self.center_update_rules or
            self.use_center_self_attention)


class ClusteringTransformerLayer(tf_keras.layers.Layer):
  """One CMT layer (or, with `DUAL_PATH_SWITCHES`, one MaX dual-path layer)."""

  def __init__(self, options=None, implementation=PLAIN_IMPLEMENTATION,
               name=None):
    """Initializes the layer.

    Args:
      options: A `LayerOptions`; default: `LayerOptions()` (gin's bindings).
      implementation: The `Implementation` to compute with (see
        `cmt_implementations`).
      name: The layer name.

    Raises:
      ValueError: On an `implementation` that is not an `Implementation`.
    """
    if not isinstance(implementation, Implementation):
      raise ValueError('implementation must be an Implementation (see '
                       f'cmt_implementations), got {implementation!r}.')
    super().__init__(name=name)
    self.options = LayerOptions() if options is None else options
    self._implementation = implementation

  def get_config(self):
    """The options and the implementation's name (what gin bound)."""
    return {**super().get_config(), **dataclasses.asdict(self.options),
            'implementation': self._implementation.name}

  def _projection(self, units, name, use_relu=False, gamma='ones'):
    std = (2 * self.options.filters) ** -0.5
    initializer = (tf_keras.initializers.TruncatedNormal(stddev=std)
                   if not use_relu else 'he_normal')
    return self._implementation.linear_bn(
        units, use_relu=use_relu, gamma_initializer=gamma,
        kernel_initializer=initializer, name=name)

  def build(self, input_shape):
    options = self.options
    rules = options.center_update_rules
    pixel_channels = input_shape[-1]
    center_channels = options.center_channels
    bottleneck, key_depth, value_depth = (
        2 * options.filters, options.filters, 2 * options.filters)
    pixel_attention_by_query = (options.update_pixels and
                                not options.pixel_update_from_assignment)
    needs_pixel_kv = options.computes_assignment or ATTENTION in rules
    needs_center_key = (options.use_center_self_attention or
                        pixel_attention_by_query)
    needs_center_value = (options.use_center_self_attention or
                          options.update_pixels)
    self._pixel_in = self._projection(bottleneck, 'pixel_conv1_bn_act', True)
    self._center_in = self._projection(bottleneck, 'center_conv1_bn_act', True)
    self._center_query = self._projection(key_depth, 'center_query')
    self._center_key = (self._projection(key_depth, 'center_key')
                        if needs_center_key else None)
    self._center_value = (self._projection(value_depth, 'center_value')
                          if needs_center_value else None)
    self._pixel_key = (self._projection(key_depth, 'pixel_key')
                       if needs_pixel_kv else None)
    self._pixel_value = (self._projection(value_depth, 'pixel_value')
                         if set(rules) & {CLUSTERING, ATTENTION, KMEANS}
                         else None)
    self._pixel_query = (self._projection(key_depth, 'pixel_query')
                         if pixel_attention_by_query else None)
    self._clustering = None
    if options.computes_assignment:
      self._clustering = self._implementation.attention(
          options.num_heads, self._implementation.assignment.SOFTMAX_OVER,
          name='clustering')
    self._clustering_out = (
        self._projection(center_channels, 'clustering_conv3_bn', gamma='zeros')
        if CLUSTERING in rules else None)
    if KMEANS in rules:
      self._kmeans_value_norm = normalization.get_norm_layer(
          name='kmeans_value_batch_norm')
      self._kmeans_out = self._projection(center_channels, 'kmeans_conv3_bn',
                                          gamma='zeros')
    self._center_attention = None
    if options.uses_center_attention:
      self._center_attention = self._implementation.attention(
          options.num_heads, attention.SOFTMAX_OVER_KEYS,
          name='center_attention')
      self._center_attention_out = self._projection(
          center_channels, 'center_conv3_bn', gamma='zeros')
    self._ffn = None
    if options.feed_forward_channels:
      self._ffn = [
          self._projection(options.feed_forward_channels, 'ffn_conv1_bn_act',
                           True),
          self._projection(center_channels, 'ffn_conv2_bn', gamma='zeros')]
    self._pixel_attention = None
    if options.update_pixels:
      self._pixel_attention = self._implementation.attention(
          options.num_heads, attention.SOFTMAX_OVER_KEYS,
          name='pixel_attention')
      self._pixel_out = self._projection(pixel_channels, 'pixel_conv3_bn',
                                         gamma='zeros')
    self._reference = None
    if options.reference_mask == reference_mask_lib.GAUSSIAN:
      self._reference = reference_mask_lib.GaussianReferenceMask(
          name='reference_mask')
    self._drop_path = drop_path.DropPath(options.drop_path_rate)
    super().build(input_shape)

  def _pixel_inputs(self, pixels):
    """(S1) [[B, HW, Cp], [B, HW, 2]]: relu(pixels) and their coordinates.

    The projection reads the list as its concatenation [B, HW, Cp (+ 2)].
    """
    flat = [_flatten_pixels(tf.nn.relu(pixels))]
    if self.options.use_coordinate_features:
      flat.append(_flatten_pixels(
          reference_mask_lib.coordinate_features(pixels)))
    return flat

  def _assignment_bias(self, centers, previous_assignment, height, width):
    """Residual logits L_prev + log reference prior (S2, S3), [B, H, W, N].

    Returns:
      (bias or None, a dict with REFERENCE_PARAMETERS if computed).
    """
    outputs = {}
    bias = None
    if self.options.use_assignment_residual and previous_assignment is not None:
      bias = resize.resize_align_corners(previous_assignment, height, width)
    if self._reference is not None:
      parameters = self._reference(centers)
      outputs[REFERENCE_PARAMETERS] = parameters
      prior = self._implementation.log_reference_prior(  # (S2)
          parameters, height, width)
      bias = prior if bias is None else bias + prior
    return bias, outputs

  def call(self, pixels, centers, previous_assignment=None, training=None,
           return_maps=False):
    """Runs the layer (the steps of the module docstring).

    Args:
      pixels: [B, H, W, Cp] unactivated pixel features (a block's output
        before its ReLU, as DeepLab2's dual-path layer): the layer reads
        relu(pixels) and adds its update to `pixels`.
      centers: [B, N, Cc] cluster centers (MaX-DeepLab's memory).
      previous_assignment: Optional float32 [B, h', w', N] assignment logits of
        the previous layer (any resolution), for the residual path.
      training: Whether batch norms and drop path run in training mode.
      return_maps: Also return the head-averaged clustering and attention maps
        (by-products; the computation is unchanged).

    Returns:
      A dict with PIXELS [B, H, W, Cp] (unactivated), CENTERS [B, N, Cc], and
      when computed
      ASSIGNMENT_LOGITS [B, H, W, N], REFERENCE_PARAMETERS [B, N, 5],
      CLUSTERING_MAP and ATTENTION_MAP [B, H, W, N].
    """
    height, width = resize.spatial_size(pixels)
    pixel_hidden = self._pixel_in(self._pixel_inputs(pixels),  # (S1)
                                  training=training)
    center_hidden = self._center_in(centers, training=training)

    def project(layer, inputs):
      return None if layer is None else layer(inputs, training=training)
    step = _Step(
        height=height, width=width, training=training, return_maps=return_maps,
        center_query=project(self._center_query, center_hidden),
        center_key=project(self._center_key, center_hidden),
        center_value=project(self._center_value, center_hidden),
        pixel_key=project(self._pixel_key, pixel_hidden),
        pixel_value=project(self._pixel_value, pixel_hidden))

    outputs = {}
    if self._clustering is not None:
      bias, reference_outputs = self._assignment_bias(
          centers, previous_assignment, height, width)
      outputs.update(reference_outputs)
      step.assignment = self._implementation.assignment(  # (S3), (S4)
          self._clustering, step.center_query, step.pixel_key, bias, training)
      outputs[ASSIGNMENT_LOGITS] = step.assignment.logits_map(height, width)
      if return_maps:
        outputs[CLUSTERING_MAP] = step.assignment.probability_map(height,
                                                                  width)

    new_centers = centers
    for rule in self._center_update_rules():
      update = _CENTER_UPDATES[rule](self, step, outputs)
      new_centers += self._drop_path(update, training=training)
    new_centers = tf.nn.relu(new_centers)
    if self._ffn is not None:
      hidden = self._ffn[0](new_centers, training=training)
      update = self._ffn[1](hidden, training=training)
      new_centers = tf.nn.relu(new_centers +
                               self._drop_path(update, training=training))
    outputs[CENTERS] = new_centers
    outputs[PIXELS] = pixels
    if self.options.update_pixels:
      outputs[PIXELS] = self._update_pixel_features(pixels, pixel_hidden, step)
    return outputs

  def _center_update_rules(self):
    """The rules whose updates are summed; center self-attention alone runs
    as the attention rule with the centers as its only keys."""
    rules = self.options.center_update_rules
    if self.options.uses_center_attention and ATTENTION not in rules:
      rules += (ATTENTION,)
    return rules

  def _clustering_update(self, step, outputs):
    """(S5) LinearBN(ReLU(BN(A V_p))), [B, N, Cc]: centers gather pixels."""
    del outputs  # Adds no output.
    clustered = step.assignment.centers_from_pixels(
        self._clustering, step.pixel_value, step.training)
    return self._clustering_out(clustered, training=step.training)

  def _kmeans_update(self, step, outputs):
    """(S5k) LinearBN(BN(A_hard^T V_p)), [B, N, Cc]: kMaX-DeepLab's update.

    A_hard is the one-hot argmax over the N centers of the head-mean
    assignment logits L (S3: residual and reference prior included).
    """
    return kmeans_attention.kmeans_update(
        _flatten_pixels(outputs[ASSIGNMENT_LOGITS]), step.pixel_value, self._kmeans_value_norm, self._kmeans_out,
        training=step.training)

  def _attention_update(self, step, outputs):
    """(S6) LinearBN(ReLU(BN(softmax(Q_c [K_p; K_c]^T) [V_p; V_c]))), [B, N, Cc].

    Pixel keys with the 'attention' rule, center keys with
    `use_center_self_attention`; one softmax over all keys. Adds
    ATTENTION_MAP to `outputs` with `return_maps`.
    """
    cross = ATTENTION in self.options.center_update_rules
    keys, values = [], []
    if cross:
      keys.append(step.pixel_key)
      values.append(step.pixel_value)
    if self.options.use_center_self_attention:
      keys.append(step.center_key)
      values.append(step.center_value)
    result = self._center_attention(step.center_query, keys, values,
                                    training=step.training)
    if step.return_maps and cross:
      outputs[ATTENTION_MAP] = _centers_by_pixels_to_map(
          attention.mean_over_heads(
              result.probabilities[..., :step.height * step.width]),
          step.height, step.width)
    return self._center_attention_out(result.output, training=step.training)

  def _update_pixel_features(self, pixels, pixel_hidden, step):
    """(S7) Pixels read the center values, by the assignment or by attention."""
    training = step.training
    if self.options.pixel_update_from_assignment:
      retrieved = step.assignment.pixels_from_centers(
          self._pixel_attention, step.center_value, training)
    else:
      pixel_query = self._pixel_query(pixel_hidden, training=training)
      retrieved = self._pixel_attention(
          pixel_query, step.center_key, step.center_value,
          training=training).output
    update = self._pixel_out(retrieved, training=training)
    update = tf.reshape(update, tf.shape(pixels))
    return pixels + self._drop_path(update, training=training)


@dataclasses.dataclass
class _Step:
  """What one call of a layer computed, handed to its center-update rules."""
  height: tf.Tensor
  width: tf.Tensor
  training: Optional[bool]
  return_maps: bool
  center_query: tf.Tensor
  center_key: Optional[tf.Tensor]
  center_value: Optional[tf.Tensor]
  pixel_key: Optional[tf.Tensor]
  pixel_value: Optional[tf.Tensor]
  assignment: Optional[Assignment] = None


# The center-update rules by name: one method each, returning [B, N, Cc]. A
# new rule is one method and one entry here.
_CENTER_UPDATES = {
    CLUSTERING: ClusteringTransformerLayer._clustering_update,  # pylint: disable=protected-access
    ATTENTION: ClusteringTransformerLayer._attention_update,  # pylint: disable=protected-access
    KMEANS: ClusteringTransformerLayer._kmeans_update,  # pylint: disable=protected-access
}
