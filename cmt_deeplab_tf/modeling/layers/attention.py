"""The one multi-head attention primitive of the mask transformers.

Both the MaX-DeepLab dual-path layer [1] and the CMT-DeepLab clustering layer [2]
use it; they differ only in the axis of the softmax:

- `SOFTMAX_OVER_KEYS`: standard cross-attention, every query (cluster center)
  distributes a unit mass over the keys (pixels) -- MaX-DeepLab's memory update.
- `SOFTMAX_OVER_QUERIES`: clustering, every key (pixel) distributes a unit mass
  over the queries (cluster centers) -- CMT-DeepLab's pixel-cluster assignment,
  "the same normalisation as the final mask prediction" [2].

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

  def compute_logits(self, query, key, logit_bias=None, training=None):
    """Returns float32 logits [B, heads, Lq, Lk] (normalised, bias added)."""
    query = split_heads(tf.cast(query, tf.float32), self.num_heads)
    key = split_heads(tf.cast(key, tf.float32), self.num_heads)
    logits = tf.einsum('bqhd,bkhd->bhqk', query, key)
    if self._logit_norm is not None:
      logits = self._logit_norm(logits, training=training)
    if logit_bias is not None:
      logits += tf.cast(logit_bias, tf.float32)
    return logits

  def normalize(self, logits):
    """Softmax of [B, heads, Lq, Lk] logits over this layer's axis."""
    return tf.nn.softmax(logits, axis=_SOFTMAX_AXES[self.softmax_over])

  def retrieve(self, weights, value, training=None, transpose_weights=False):
    """Aggregates values with attention weights, then BN and activation.

    Args:
      weights: float32 [B, heads, Lq, Lk] attention weights.
      value: [B, Lk, Dv] values (or [B, Lq, Dv] with `transpose_weights`).
      training: Whether batch norms use batch statistics.
      transpose_weights: Retrieve for the keys instead: output[k] =
        sum_q weights[q, k] value[q]. CMT-DeepLab updates pixels from centers
        with the assignment computed for the centers.

    Returns:
      The retrieved values, [B, Lq, Dv] ([B, Lk, Dv] if transposed).
    """
    value_heads = split_heads(value, self.num_heads)
    weights = tf.cast(weights, value.dtype)
    equation = 'bhqk,bqhd->bkhd' if transpose_weights else 'bhqk,bkhd->bqhd'
    retrieved = tf.einsum(equation, weights, value_heads)
    shape = tf.shape(retrieved)
    retrieved = tf.reshape(retrieved,
                           [shape[0], shape[1], value.shape[-1]])
    return self._activation(self._value_norm(retrieved, training=training))

  def call(self, query, key, value, logit_bias=None, training=None):
    """Runs attention.

    Args:
      query: [B, Lq, Dk] queries.
      key: [B, Lk, Dk] keys.
      value: [B, Lk, Dv] values.
      logit_bias: Optional additive bias broadcastable to [B, heads, Lq, Lk]
        (e.g. CMT's residual assignment logits and reference-mask prior).
      training: Whether batch norms use batch statistics.

    Returns:
      An `AttentionResult` with output [B, Lq, Dv] and float32 logits and
      probabilities [B, heads, Lq, Lk].
    """
    logits = self.compute_logits(query, key, logit_bias, training=training)
    probabilities = self.normalize(logits)
    output = self.retrieve(probabilities, value, training=training)
    return AttentionResult(output, logits, probabilities)
