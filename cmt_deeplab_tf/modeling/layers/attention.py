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

This module is the plain form, written as the equations read.
`fast_path.FusedMultiHeadAttention` computes the same outputs with the same
variables faster (folded norms, the logits' batch statistics from the operands,
reordered products).

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

# output: [B, Lq, Dv]; probabilities: float32 [B, heads, Lq, Lk].
AttentionResult = collections.namedtuple('AttentionResult',
                                         ['output', 'probabilities'])


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


def merge_heads(inputs):
  """[B, heads, L, d] -> [B, L, heads * d]."""
  shape = tf.shape(inputs)
  merged = tf.transpose(inputs, [0, 2, 1, 3])
  return tf.reshape(merged, [shape[0], shape[2], inputs.shape[1] * inputs.shape[3]])


def mean_over_heads(probabilities):
  """Averages [B, heads, Lq, Lk] attention over heads (DETR-style) -> [B, Lq, Lk]."""
  return tf.reduce_mean(probabilities, axis=1)


@gin.configurable(denylist=['num_heads', 'softmax_over'])
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
    """logits_h = BN_h(q_h k_h^T) + logit_bias, float32 [B, heads, Lq, Lk]."""
    logits = tf.linalg.matmul(self._to_heads(query, tf.float32),
                              self._to_heads(key, tf.float32),
                              transpose_b=True)
    if self._logit_norm is not None:
      logits = self._logit_norm(logits, training=training)
    if logit_bias is not None:
      logits += tf.cast(logit_bias, tf.float32)
    return logits

  def attend(self, query, key, logit_bias=None, training=None):
    """Attention weights and head-averaged logits, without retrieval.

    Args:
      query: [B, Lq, Dk] queries.
      key: [B, Lk, Dk] keys.
      logit_bias: Optional additive bias broadcastable to [B, heads, Lq, Lk].
      training: Whether the logit batch norm uses batch statistics.

    Returns:
      probabilities: float32 [B, heads, Lq, Lk], the softmax of the logits.
      mean_logits: float32 [B, Lq, Lk], `mean_over_heads` of the logits.
    """
    logits = self.compute_logits(query, key, logit_bias, training)
    return self.normalize(logits), mean_over_heads(logits)

  def normalize(self, logits):
    """Softmax of [B, heads, Lq, Lk] logits over this layer's axis."""
    return tf.nn.softmax(logits, axis=_SOFTMAX_AXES[self.softmax_over])

  def retrieve(self, weights, value, training=None, transpose_weights=False):
    """Aggregation, BN and activation: act(BN(concat_h weights_h value_h)).

    Args:
      weights: float32 [B, heads, Lq, Lk] attention weights, normalised as
        this layer's softmax normalises them.
      value: [B, Lk, Dv] values (or [B, Lq, Dv] with `transpose_weights`), or
        a list of such tensors concatenated along their second axis.
      training: Whether batch norms use batch statistics.
      transpose_weights: Retrieve for the keys instead: output[k] =
        sum_q weights[q, k] value[q] (CMT-DeepLab's pixel update reads the
        centers with the assignment computed for the centers).

    Returns:
      The retrieved values, [B, Lq, Dv] ([B, Lk, Dv] if transposed).
    """
    value_heads = self._to_heads(value)
    weights = tf.cast(weights, value_heads.dtype)
    retrieved = tf.linalg.matmul(weights, value_heads,
                                 transpose_a=transpose_weights)
    return self._activation(normalization.normalize_last_axis(
        self._value_norm, merge_heads(retrieved), training=training))

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
      An `AttentionResult` with output [B, Lq, Dv] and float32 probabilities
      [B, heads, Lq, Lk].
    """
    probabilities = self.normalize(
        self.compute_logits(query, key, logit_bias, training))
    return AttentionResult(self.retrieve(probabilities, value, training),
                           probabilities)
