"""Position-sensitive axial self-attention (Axial-DeepLab, ECCV 2020).

Along one spatial axis, each output position o attends to every position p of the
same row (width axis) or column (height axis):

  y_o = sum_p softmax_p(BN(q_o . k_p) + BN(q_o . r^q_{p-o}) + BN(k_p . r^k_{p-o}))
        * (v_p + r^v_{p-o}),

Eq. (4) of H. Wang et al., "Axial-DeepLab: Stand-Alone Axial-Attention for
Panoptic Segmentation", ECCV 2020, with DeepLab2's batch norms: one on q, k, v,
one per similarity term (per head), and one per retrieved term (per channel)
before they are summed.

The relative encodings r^q, r^k, r^v are tables of 2 * max_span - 1 vectors
shared by the heads, so the parameter count does not depend on the input size.
Distances beyond +-(max_span - 1) share the end vectors of the table, as DeepLab2
does (`positional_encodings.MAX_SPAN = 255`). The attention is global along the
axis at every length (DeepLab2 only implements global axial attention) and the
layer takes any input size, not only the one it was built with.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import normalization

HEIGHT = 'height'
WIDTH = 'width'
# DeepLab2's span of the relative positional encodings.
DEFAULT_MAX_SPAN = 255


def relative_distance_indices(length, max_span):
  """Indices into a relative-encoding table for every (query, key) pair.

  Args:
    length: The (possibly dynamic) number of positions along the axis.
    max_span: The table holds distances -(max_span - 1) .. (max_span - 1).

  Returns:
    An int32 [length, length] tensor whose (o, p) entry is
    clip(p - o, -(max_span - 1), max_span - 1) + max_span - 1.
  """
  positions = tf.range(length)
  distances = positions[tf.newaxis, :] - positions[:, tf.newaxis]
  return tf.clip_by_value(distances, 1 - max_span, max_span - 1) + max_span - 1


def _split_heads(x, num_heads):
  """[..., heads * depth] -> [..., heads, depth]."""
  depth = x.shape[-1] // num_heads
  return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [num_heads, depth]], 0))


def _merge_heads(x):
  """[..., heads, depth] -> [..., heads * depth]."""
  merged = x.shape[-2] * x.shape[-1]
  return tf.reshape(x, tf.concat([tf.shape(x)[:-2], [merged]], 0))


@gin.configurable(denylist=['axis', 'key_depth', 'value_depth', 'name'])
class AxialAttention(tf_keras.layers.Layer):
  """Multi-head position-sensitive self-attention along one spatial axis."""

  def __init__(self,
               axis,
               key_depth,
               value_depth,
               num_heads=8,
               max_span=DEFAULT_MAX_SPAN,
               use_content_similarity=True,
               use_query_rpe_similarity=True,
               use_key_rpe_similarity=True,
               retrieve_value_content=True,
               retrieve_value_rpe=True,
               rpe_initializer_stddev=1.0,
               name=None):
    """Initializes the layer.

    Args:
      axis: 'height' or 'width', the axis attended along.
      key_depth: Total depth of queries and keys over all heads.
      value_depth: Total depth of values over all heads; the output depth.
      num_heads: Number of attention heads.
      max_span: Relative distances up to +-(max_span - 1) get their own
        encoding; farther ones share the end encodings.
      use_content_similarity: Whether the logits include q . k.
      use_query_rpe_similarity: Whether the logits include q . r^q.
      use_key_rpe_similarity: Whether the logits include k . r^k.
      retrieve_value_content: Whether the output includes the attended values.
      retrieve_value_rpe: Whether the output includes the attended r^v.
      rpe_initializer_stddev: Std of the truncated-normal initialization of the
        relative encodings (DeepLab2: 1.0).
      name: The layer name.

    Raises:
      ValueError: On an unknown axis, depths not divisible by `num_heads`, a
        non-positive `max_span`, or no similarity or no retrieved term.
    """
    if axis not in (HEIGHT, WIDTH):
      raise ValueError(f"AxialAttention axis must be '{HEIGHT}' or '{WIDTH}', "
                       f'got axis={axis!r}.')
    for arg_name, depth in (('key_depth', key_depth),
                            ('value_depth', value_depth)):
      if depth <= 0 or depth % num_heads:
        raise ValueError(f'AxialAttention {arg_name}={depth} must be a positive '
                         f'multiple of num_heads={num_heads}.')
    if max_span < 1:
      raise ValueError(f'AxialAttention max_span must be >= 1, got {max_span}.')
    if not (use_content_similarity or use_query_rpe_similarity or
            use_key_rpe_similarity):
      raise ValueError('AxialAttention needs at least one similarity term; all '
                       'use_*_similarity arguments are False.')
    if not (retrieve_value_content or retrieve_value_rpe):
      raise ValueError('AxialAttention needs retrieve_value_content or '
                       'retrieve_value_rpe; both are False.')
    super().__init__(name=name)
    self._axis = axis
    self._key_depth = key_depth
    self._value_depth = value_depth
    self._num_heads = num_heads
    self._max_span = max_span
    self._use_content_similarity = use_content_similarity
    self._use_query_rpe_similarity = use_query_rpe_similarity
    self._use_key_rpe_similarity = use_key_rpe_similarity
    self._retrieve_value_content = retrieve_value_content
    self._retrieve_value_rpe = retrieve_value_rpe
    self._rpe_initializer_stddev = rpe_initializer_stddev
    # Einsum subscripts: b batch, l query and m key positions along the axis,
    # x the other spatial axis, n heads, d depth per head. Attending in the
    # input's own layout avoids transposing the feature maps.
    query = ('bxl' if axis == WIDTH else 'blx') + 'nd'
    key = query.replace('l', 'm')
    self._equations = {
        'content': f'{query},{key}->bxnlm',
        'query_rpe': f'{query},lmd->bxnlm',
        'key_rpe': f'{key},lmd->bxnlm',
        'retrieve_content': f'bxnlm,{key}->{query}',
        'retrieve_rpe': f'bxnlm,lmd->{query}',
    }

    self._qkv_norm = normalization.get_norm_layer(name='batch_norm_qkv')
    similarity_terms = [
        term for term, used in (('content', use_content_similarity),
                                ('query_rpe', use_query_rpe_similarity),
                                ('key_rpe', use_key_rpe_similarity)) if used]
    # Logits and softmax stay in float32 under mixed precision.
    self._similarity_norms = [
        normalization.get_norm_layer(
            name=f'batch_norm_{term}_similarity', axis=2, dtype='float32')
        for term in similarity_terms]
    retrieved_terms = [
        term for term, used in (('content', retrieve_value_content),
                                ('rpe', retrieve_value_rpe)) if used]
    self._output_norms = [
        normalization.get_norm_layer(name=f'batch_norm_retrieved_{term}')
        for term in retrieved_terms]

  def build(self, input_shape):
    channels = input_shape[-1]
    self._qkv_kernel = self.add_weight(
        'qkv_kernel', shape=[channels, 2 * self._key_depth + self._value_depth],
        initializer=tf_keras.initializers.TruncatedNormal(
            stddev=channels**-0.5))
    table_size = 2 * self._max_span - 1
    key_depth_per_head = self._key_depth // self._num_heads
    if self._use_query_rpe_similarity:
      self._query_rpe = self.add_weight(
          'query_rpe', shape=[table_size, key_depth_per_head],
          initializer=self._rpe_initializer())
    if self._use_key_rpe_similarity:
      self._key_rpe = self.add_weight(
          'key_rpe', shape=[table_size, key_depth_per_head],
          initializer=self._rpe_initializer())
    if self._retrieve_value_rpe:
      self._value_rpe = self.add_weight(
          'value_rpe', shape=[table_size, self._value_depth // self._num_heads],
          initializer=self._rpe_initializer())
    super().build(input_shape)

  def _rpe_initializer(self):
    # A new instance per table: one unseeded instance repeats its values.
    return tf_keras.initializers.TruncatedNormal(
        stddev=self._rpe_initializer_stddev)

  def _similarity_logits(self, query, key, distance_indices, training):
    """float32 [b, x, heads, l, m] logits (x: the other axis), summed."""
    query = tf.cast(query, tf.float32)
    key = tf.cast(key, tf.float32)
    terms = []
    if self._use_content_similarity:
      terms.append(tf.einsum(self._equations['content'], query, key))
    if self._use_query_rpe_similarity:
      query_rpe = tf.gather(tf.cast(self._query_rpe, tf.float32),
                            distance_indices)
      terms.append(tf.einsum(self._equations['query_rpe'], query, query_rpe))
    if self._use_key_rpe_similarity:
      key_rpe = tf.gather(tf.cast(self._key_rpe, tf.float32), distance_indices)
      terms.append(tf.einsum(self._equations['key_rpe'], key, key_rpe))
    return tf.add_n([norm(term, training=training)
                     for norm, term in zip(self._similarity_norms, terms)])

  def _retrieve(self, weights, value, distance_indices, training):
    """[batch, height, width, value_depth] output, summed over the terms."""
    terms = []
    if self._retrieve_value_content:
      terms.append(
          tf.einsum(self._equations['retrieve_content'], weights, value))
    if self._retrieve_value_rpe:
      value_rpe = tf.gather(tf.cast(self._value_rpe, weights.dtype),
                            distance_indices)
      terms.append(
          tf.einsum(self._equations['retrieve_rpe'], weights, value_rpe))
    return tf.add_n([norm(_merge_heads(term), training=training)
                     for norm, term in zip(self._output_norms, terms)])

  def call(self, inputs, training=None):
    """Attends along the layer's axis.

    Args:
      inputs: A [batch, height, width, channels] tensor of any spatial size.
      training: Whether batch norms use batch statistics.

    Returns:
      A [batch, height, width, value_depth] tensor.
    """
    qkv = tf.einsum('bhwc,cd->bhwd', inputs, self._qkv_kernel)
    qkv = self._qkv_norm(qkv, training=training)
    query, key, value = tf.split(
        qkv, [self._key_depth, self._key_depth, self._value_depth], axis=-1)
    query = _split_heads(query, self._num_heads)
    key = _split_heads(key, self._num_heads)
    value = _split_heads(value, self._num_heads)
    length = tf.shape(inputs)[2 if self._axis == WIDTH else 1]
    distance_indices = relative_distance_indices(length, self._max_span)
    logits = self._similarity_logits(query, key, distance_indices, training)
    weights = tf.cast(tf.nn.softmax(logits, axis=-1), value.dtype)
    return self._retrieve(weights, value, distance_indices, training)
