"""The one multi-head attention primitive of the mask transformers.

Both the MaX-DeepLab dual-path layer [1] and the CMT-DeepLab clustering layer [2]
use it; they differ only in the axis of the softmax:

- `SOFTMAX_OVER_KEYS`: standard cross-attention, every query (cluster center)
  distributes a unit mass over the keys (pixels) -- MaX-DeepLab's memory update.
- `SOFTMAX_OVER_QUERIES`: clustering, every key (pixel) distributes a unit mass
  over the queries (cluster centers) -- CMT-DeepLab's pixel-cluster assignment,
  "the same normalisation as the final mask prediction" [2].

Clustering is the same computation with the roles swapped: pixels as queries,
centers as keys, softmax over keys. The CMT layer uses that form, because then
the normalised axis is the last one of the [B, heads, pixels, centers] logits
(no transposes of the largest tensor of the model) and both retrievals, pixels
-> centers and centers -> pixels, are plain batch matmuls.

Following DeepLab2's `AttentionOperation`, the similarity logits get a batch norm
per head and the retrieved values a batch norm and an activation. Logits, their
optional additive bias and the softmax are computed in float32 even under the
`mixed_bfloat16` policy.

[1] MaX-DeepLab: End-to-End Panoptic Segmentation with Mask Transformers,
    Wang et al., CVPR 2021.
[2] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
"""
import collections

import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import normalization

SOFTMAX_OVER_KEYS = 'keys'
SOFTMAX_OVER_QUERIES = 'queries'
_SOFTMAX_AXES = {SOFTMAX_OVER_KEYS: -1, SOFTMAX_OVER_QUERIES: -2}

# output: [B, Lq, Dv]; logits, probabilities: float32 [B, heads, Lq, Lk].
AttentionResult = collections.namedtuple(
    'AttentionResult', ['output', 'logits', 'probabilities'])


def split_heads(inputs, num_heads):
  """Reshapes [B, L, D] to [B, L, num_heads, D / num_heads]."""
  depth = inputs.shape[-1]
  if depth % num_heads:
    raise ValueError(f'The channels ({depth}) must be divisible by num_heads '
                     f'({num_heads}).')
  shape = tf.shape(inputs)
  return tf.reshape(inputs, [shape[0], shape[1], num_heads,
                             depth // num_heads])


def _heads_first(inputs, num_heads):
  """[B, L, D] -> [B, num_heads, L, D / num_heads], the batch-matmul layout."""
  return tf.transpose(split_heads(inputs, num_heads), [0, 2, 1, 3])


def _merge_heads(inputs):
  """[B, heads, L, d] -> [B, L, heads * d]."""
  shape = tf.shape(inputs)
  merged = tf.transpose(inputs, [0, 2, 1, 3])
  return tf.reshape(merged, [shape[0], shape[2], inputs.shape[1] * inputs.shape[3]])


def _is_shorter(first, second):
  """Whether [B, heads, L, d] `first` has statically fewer positions L."""
  length, other = first.shape[-2], second.shape[-2]
  return length is not None and (other is None or length < other)


def mean_over_heads(probabilities):
  """Averages [B, heads, Lq, Lk] attention over heads (DETR-style) -> [B, Lq, Lk]."""
  return tf.reduce_mean(probabilities, axis=1)


@gin.configurable
class MultiHeadAttention(tf_keras.layers.Layer):
  """Multi-head attention with a softmax over keys or over queries.

  For queries q [B, Lq, Dk], keys k [B, Lk, Dk] and values v [B, Lk, Dv], split
  into `num_heads` heads:
    logits_h = BN(q_h k_h^T) + logit_bias          [B, heads, Lq, Lk], float32
    p_h = softmax(logits_h, axis=keys or queries)
    output = act(BN(concat_h(p_h v_h)))            [B, Lq, Dv]
  """

  def __init__(self, num_heads=8, softmax_over=SOFTMAX_OVER_KEYS,
               normalize_logits=True, activation='relu', name=None):
    """Initializes the layer.

    Args:
      num_heads: Number of attention heads.
      softmax_over: `SOFTMAX_OVER_KEYS` (cross-attention) or
        `SOFTMAX_OVER_QUERIES` (clustering).
      normalize_logits: Whether to batch-normalise the similarity logits per
        head (DeepLab2's `batch_norm_similarity`).
      activation: Activation after the batch norm of the retrieved values,
        'relu' as in MaX-DeepLab or 'linear'.
      name: The layer name.

    Raises:
      ValueError: If `softmax_over` or `num_heads` is invalid.
    """
    if softmax_over not in _SOFTMAX_AXES:
      raise ValueError(f'softmax_over must be one of {sorted(_SOFTMAX_AXES)}, '
                       f'got {softmax_over!r}.')
    if num_heads < 1:
      raise ValueError(f'num_heads must be positive, got {num_heads}.')
    super().__init__(name=name)
    self.num_heads = num_heads
    self.softmax_over = softmax_over
    self._logit_norm = None
    if normalize_logits:
      self._logit_norm = normalization.get_norm_layer(
          name='logit_batch_norm', axis=1, dtype='float32')
    self._value_norm = normalization.get_norm_layer(name='value_batch_norm')
    self._activation = tf_keras.activations.get(activation)

  def _shifted_logits(self, query, key, logit_bias, training):
    """Logits up to the per-head offset of the inference batch norm.

    At inference the logit batch norm is a per-head affine map; its scale is
    applied before the product to the shorter of queries and keys (the
    cluster centers), and its offset, a constant per head, is returned
    separately [heads, 1, 1]: it cancels in both softmaxes, so only callers
    that need the logits themselves add it. The [B, heads, Lq, Lk] tensor is
    then written once and, with a bias, updated once. In training the Keras
    batch norm runs on the logits (batch statistics, moving averages) and the
    offset is None.

    Returns:
      (float32 [B, heads, Lq, Lk] logits - offset, offset or None).
    """
    query = self._to_heads(query, tf.float32)
    key = self._to_heads(key, tf.float32)
    offset = None
    if self._logit_norm is not None and normalization.is_inference(training):
      scale, offset = normalization.inference_affine(
          self._logit_norm, [1, self.num_heads, 1, 1])
      if _is_shorter(key, query):
        key *= scale[:, tf.newaxis, tf.newaxis]
      else:
        query *= scale[:, tf.newaxis, tf.newaxis]
      offset = offset[:, tf.newaxis, tf.newaxis]
    logits = tf.linalg.matmul(query, key, transpose_b=True)
    if self._logit_norm is not None and offset is None:
      logits = self._logit_norm(logits, training=training)
    if logit_bias is not None:
      logits += tf.cast(logit_bias, tf.float32)
    return logits, offset

  def compute_logits(self, query, key, logit_bias=None, training=None):
    """Returns float32 logits [B, heads, Lq, Lk] (normalised, bias added)."""
    logits, offset = self._shifted_logits(query, key, logit_bias, training)
    return logits if offset is None else logits + offset

  def attend(self, query, key, logit_bias=None, training=None):
    """Attention weights and head-averaged logits, without retrieval.

    Args:
      query: [B, Lq, Dk] queries.
      key: [B, Lk, Dk] keys.
      logit_bias: Optional additive bias broadcastable to [B, heads, Lq, Lk].
      training: Whether the logit batch norm uses batch statistics.

    Returns:
      probabilities: float32 [B, heads, Lq, Lk], the softmax of the logits.
      mean_logits: float32 [B, Lq, Lk], `mean_over_heads` of the logits (the
        batch-norm offset added to this smaller tensor only).
    """
    logits, offset = self._shifted_logits(query, key, logit_bias, training)
    mean_logits = mean_over_heads(logits)
    if offset is not None:
      mean_logits += tf.reduce_mean(offset)
    return self.normalize(logits), mean_logits

  def normalize(self, logits):
    """Softmax of [B, heads, Lq, Lk] logits over this layer's axis."""
    return tf.nn.softmax(logits, axis=_SOFTMAX_AXES[self.softmax_over])

  def retrieve(self, weights, value, training=None, transpose_weights=False):
    """Aggregates values with attention weights, then BN and activation.

    Args:
      weights: float32 [B, heads, Lq, Lk] attention weights, normalised as
        this layer's softmax normalises them.
      value: [B, Lk, Dv] values (or [B, Lq, Dv] with `transpose_weights`), or
        a list of such tensors concatenated along their second axis.
      training: Whether batch norms use batch statistics.
      transpose_weights: Retrieve for the keys instead: output[k] =
        sum_q weights[q, k] value[q]. CMT-DeepLab updates centers from pixels
        with the assignment computed for the pixels.

    Returns:
      The retrieved values, [B, Lq, Dv] ([B, Lk, Dv] if transposed).
    """
    value_heads = self._to_heads(value)
    weights = tf.cast(weights, value_heads.dtype)
    depth = value_heads.shape[1] * value_heads.shape[3]
    if transpose_weights:
      # value^T weights, [B, heads, d, Lk]: reads the (large) weights in their
      # stored order; oneDNN runs this 1.7x faster than weights^T value for
      # the [8, 60000, 128] stride-4 assignment.
      retrieved = tf.linalg.matmul(value_heads, weights, adjoint_a=True)
      shape = tf.shape(retrieved)
      retrieved = tf.reshape(tf.transpose(retrieved, [0, 3, 1, 2]),
                             [shape[0], shape[3], depth])
      return self._activation(self._value_norm(retrieved, training=training))
    # Each row of the weights sums to one, so the inference batch norm (an
    # affine map per channel) of the retrieved values equals the weighted sum
    # of normalised values: it then runs on the Lk (e.g. 128 center) values
    # instead of the Lq (e.g. pixel) outputs.
    norm_values_first = (normalization.is_inference(training) and
                         self.softmax_over == SOFTMAX_OVER_KEYS and
                         _is_shorter(value_heads, weights))
    if norm_values_first:
      heads, depth_per_head = value_heads.shape[1], value_heads.shape[3]
      scale, offset = (
          tf.cast(tf.reshape(x, [heads, 1, depth_per_head]), value_heads.dtype)
          for x in normalization.inference_affine(self._value_norm,
                                                  [1, 1, depth]))
      value_heads = value_heads * scale + offset
    retrieved = _merge_heads(tf.linalg.matmul(weights, value_heads))
    if not norm_values_first:
      retrieved = self._value_norm(retrieved, training=training)
    return self._activation(retrieved)

  def _to_heads(self, inputs, dtype=None):
    """[B, L, D] (or a list concatenated along L) -> [B, heads, L, D / heads].

    Parts are split separately and then concatenated, so a tensor that is
    split for several attentions (e.g. the pixel keys) is split once: the
    graph optimizer merges the identical reshapes and transposes.
    """
    parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    dtype = dtype or parts[0].dtype
    heads = [_heads_first(tf.cast(part, dtype), self.num_heads)
             for part in parts]
    return heads[0] if len(heads) == 1 else tf.concat(heads, axis=2)

  def call(self, query, key, value, logit_bias=None, training=None):
    """Runs attention.

    Args:
      query: [B, Lq, Dk] queries.
      key: [B, Lk, Dk] keys, or a list of [B, L_i, Dk] keys that together
        make the Lk keys (e.g. pixels and centers).
      value: [B, Lk, Dv] values, or a list like `key`.
      logit_bias: Optional additive bias broadcastable to [B, heads, Lq, Lk]
        (e.g. CMT's residual assignment logits and reference-mask prior).
      training: Whether batch norms use batch statistics.

    Returns:
      An `AttentionResult` with output [B, Lq, Dv] and float32 logits and
      probabilities [B, heads, Lq, Lk].
    """
    logits, offset = self._shifted_logits(query, key, logit_bias, training)
    probabilities = self.normalize(logits)
    output = self.retrieve(probabilities, value, training=training)
    if offset is not None:  # Pruned from a graph that does not use it.
      logits += offset
    return AttentionResult(output, logits, probabilities)
