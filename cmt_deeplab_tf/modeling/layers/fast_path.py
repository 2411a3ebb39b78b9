"""The fast implementation of the CMT layer: same variables, same outputs.

`cmt_implementations.FUSED` (the models' default) runs these in place of the
plain forms that read as the paper writes them (`cmt_implementations.PLAIN`). Each piece computes what its plain counterpart
computes, with the same variables (names and shapes), so checkpoints and the
two implementations are interchangeable; `tests/modeling/test_fast_path.py`
checks the equality in training and inference mode at random parameters and
batch-norm statistics.

- `PixelsQueryCenters`: the assignment held as [B, heads, HW, N] (pixels
  query the centers, softmax over keys) instead of the paper's [B, heads, N,
  HW]: the normalised axis is the last one of the largest tensor of the model,
  and both retrievals are batch matmuls in its stored order.
- `FusedMultiHeadAttention`: the per-head logit batch norm is folded into the
  shorter operand and its offset, which cancels in the softmax, is dropped. At
  inference the norm is the moving statistics' affine map; in training its
  batch statistics come from the operands' [d, d] second moments
  (`normalization.product_affine`) instead of passes over the [B, heads, Lq,
  Lk] logits (TensorFlow's fused kernel for a norm over axis 1 transposes
  them on CPU).
  The value batch norm runs on the (fewer) values instead of the outputs at
  inference when every row of the weights sums to one.
- `FusedLinearBN`: at inference the batch norm is folded into the projection
  (one matmul with a bias, which oneDNN fuses with the ReLU); a list of inputs
  (pixel features and their coordinates) is projected without materialising
  the concatenation; works around a grappler remapper failure.
- `separable_log_reference_prior`: log sigmoid of the Gaussian reference-mask
  logits from two small per-axis tables (one exp per table entry, one log1p
  per element) instead of TensorFlow's softplus.
"""
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import attention
from cmt_deeplab_tf.modeling.layers import linear_bn
from cmt_deeplab_tf.modeling.layers import normalization
from cmt_deeplab_tf.modeling.layers import reference_mask

def _is_shorter(first, second):
  """Whether [B, heads, L, d] `first` has statically fewer positions L."""
  length, other = first.shape[-2], second.shape[-2]
  return length is not None and (other is None or length < other)


def _flatten(inputs):
  """[..., C] -> [prod(...), C]."""
  return tf.reshape(inputs, [-1, inputs.shape[-1]])


def _relu_after_add(inputs):
  """ReLU as a Maximum, for a sum whose first term is a MatMul + BiasAdd.

  MatMul + BiasAdd + Add + Relu makes grappler's remapper fail on the whole
  graph (TF 2.20, oneDNN), which silently loses every fusion of the model; a
  Maximum is not part of that pattern.
  """
  return tf.maximum(inputs, tf.zeros([], inputs.dtype))


class FusedLinearBN(linear_bn.LinearBN):
  """`LinearBN` with its inference batch norm folded into the projection.

  BN(x W) = x W' + b with W' = W * scale and b = offset (per channel).
  """

  def call(self, inputs, training=None):
    """Projects [..., C_in] (or a list [..., C_i], as their concatenation).

    Args:
      inputs: A tensor [..., C_in], or a list of tensors [..., C_i] with the
        same leading shape, projected as their concatenation [..., sum C_i].
      training: Whether the batch norm uses batch statistics.

    Returns:
      [..., units].
    """
    parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    parts = [tf.cast(part, parts[0].dtype) for part in parts]
    if normalization.is_inference(training):
      return self._folded_projection(parts)
    if len(parts) == 1:
      return super().call(parts[0], training=training)
    # A sum of per-part products: the backward pass keeps the parts, which
    # their producers keep anyway, instead of a [..., sum C_i] concatenation.
    x = normalization.normalize_last_axis(
        self._norm, self._project(parts, self._part_kernels(parts)),
        training=training)
    return tf.nn.relu(x) if self._use_relu else x

  def _part_kernels(self, parts, scale=None):
    """The rows of the kernel (times `scale`) that multiply each part."""
    channels = [part.shape[-1] for part in parts]
    if not self._dense.built:  # Create the kernel, under the dense's own name.
      ones = [1] * (parts[0].shape.rank - 1)  # The variables' input rank.
      self._dense(tf.zeros(ones + [sum(channels)], parts[0].dtype))
    kernel = tf.cast(self._dense.kernel, tf.float32)
    if scale is not None:
      kernel = kernel * scale
    return tf.split(tf.cast(kernel, parts[0].dtype), channels, axis=0)

  def _project(self, parts, kernels, offset=None, relu=False):
    """[relu](sum_i parts[i] kernels[i] (+ offset)), [..., units]."""
    leading = tf.shape(parts[0])[:-1]
    # grappler's remapper fuses the first MatMul + BiasAdd (+ ReLU), and the
    # Add of a further term, into one oneDNN kernel.
    projected = tf.linalg.matmul(_flatten(parts[0]), kernels[0])
    if offset is not None:
      projected = tf.nn.bias_add(projected, tf.cast(offset, kernels[0].dtype))
    for part, part_kernel in zip(parts[1:], kernels[1:]):
      projected += tf.linalg.matmul(_flatten(part), part_kernel)
    if relu:
      projected = (tf.nn.relu(projected) if len(parts) == 1 else
                   _relu_after_add(projected))
    return tf.reshape(projected, tf.concat([leading, [self._units]], axis=0))

  def _folded_projection(self, parts):
    """sum_i parts[i] W'_i + offset, with the inference batch norm folded in."""
    ones = [1] * (parts[0].shape.rank - 1)  # The variables' input rank.
    scale, offset = normalization.inference_affine(self._norm,
                                                   ones + [self._units])
    return self._project(parts, self._part_kernels(parts, scale), offset,
                         relu=self._use_relu)


class FusedMultiHeadAttention(attention.MultiHeadAttention):
  """`MultiHeadAttention` with folded logit norms and reordered products."""

  def _shifted_logits(self, query, key, logit_bias, training):
    """Logits up to the per-head offset of the logit batch norm.

    The norm is a per-head affine map (`normalization.product_affine`: the
    moving statistics' at inference, in training the batch statistics of the
    product computed from its operands); its scale is applied before the
    product to the shorter of queries and keys (the cluster centers), and
    its offset, a constant per head, is returned separately
    [heads, 1, 1]: it cancels in both softmaxes, so only callers that need
    the logits themselves add it. The [B, heads, Lq, Lk] tensor is then
    written once and, with a bias, updated once. With a tensor `training`
    the Keras batch norm runs on the logits and the offset is None.

    Returns:
      (float32 [B, heads, Lq, Lk] logits - offset, offset or None).
    """
    if self._logit_norm is None or isinstance(training, tf.Tensor):
      return self.compute_logits(query, key, logit_bias, training), None
    query = self._to_heads(query, tf.float32)
    key = self._to_heads(key, tf.float32)
    scale, offset = normalization.product_affine(self._logit_norm, query, key,
                                                 training)
    if training:
      # A caller that drops the offset has zero as its exact gradient (a
      # constant per head cancels in the softmax); a zero term keeps beta's
      # gradient a zero rather than None for such callers.
      scale += 0.0 * tf.reduce_sum(offset)
    if _is_shorter(key, query):
      key *= scale[:, tf.newaxis, tf.newaxis]
    else:
      query *= scale[:, tf.newaxis, tf.newaxis]
    logits = tf.linalg.matmul(query, key, transpose_b=True)
    if logit_bias is not None:
      logits += tf.cast(logit_bias, tf.float32)
    return logits, offset[:, tf.newaxis, tf.newaxis]

  def attend(self, query, key, logit_bias=None, training=None):
    """As `MultiHeadAttention.attend`; the offset goes to the mean logits."""
    logits, offset = self._shifted_logits(query, key, logit_bias, training)
    mean_logits = attention.mean_over_heads(logits)
    if offset is not None:
      mean_logits += tf.reduce_mean(offset)
    return self.normalize(logits), mean_logits

  def retrieve(self, weights, value, training=None, transpose_weights=False):
    """As `MultiHeadAttention.retrieve`, with reordered products."""
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
      return self._activation(normalization.normalize_last_axis(
          self._value_norm, retrieved, training=training))
    # Each row of the weights sums to one, so the inference batch norm (an
    # affine map per channel) of the retrieved values equals the weighted sum
    # of normalised values: it then runs on the Lk (e.g. 128 center) values
    # instead of the Lq (e.g. pixel) outputs.
    norm_values_first = (normalization.is_inference(training) and
                         self.softmax_over == attention.SOFTMAX_OVER_KEYS and
                         _is_shorter(value_heads, weights))
    if norm_values_first:
      heads, depth_per_head = value_heads.shape[1], value_heads.shape[3]
      scale, offset = (
          tf.cast(tf.reshape(x, [heads, 1, depth_per_head]), value_heads.dtype)
          for x in normalization.inference_affine(self._value_norm,
                                                  [1, 1, depth]))
      value_heads = value_heads * scale + offset
    retrieved = attention.merge_heads(tf.linalg.matmul(weights, value_heads))
    if not norm_values_first:
      retrieved = normalization.normalize_last_axis(self._value_norm, retrieved,
                                                    training=training)
    return self._activation(retrieved)

  def call(self, query, key, value, logit_bias=None, training=None):
    """As `MultiHeadAttention.call`."""
    logits, _ = self._shifted_logits(query, key, logit_bias, training)
    probabilities = self.normalize(logits)
    return attention.AttentionResult(
        self.retrieve(probabilities, value, training=training), probabilities)


class PixelsQueryCenters:
  """The pixel-cluster assignment held as [B, heads, HW, N].

  The transpose of `clustering_transformer.Assignment`, with the same
  interface: the pixels query the centers and the softmax runs over the keys
  (the centers), the last axis. The clustering attention is built with
  `SOFTMAX_OVER`.
  """

  SOFTMAX_OVER = attention.SOFTMAX_OVER_KEYS

  def __init__(self, clustering, center_query, pixel_key, bias, training):
    """Computes the assignment.

    Args:
      clustering: The layer's clustering `FusedMultiHeadAttention`.
      center_query: [B, N, Dk] center queries.
      pixel_key: [B, HW, Dk] pixel keys.
      bias: None or float32 [B, H, W, N] additive assignment logits.
      training: Training mode.
    """
    if bias is not None:
      shape = tf.shape(bias)
      bias = tf.reshape(bias, [shape[0], 1, -1, shape[3]])
    self._weights, self._mean_logits = clustering.attend(
        pixel_key, center_query, bias, training=training)

  def logits_map(self, height, width):
    """Head-mean assignment logits, float32 [B, H, W, N]."""
    return _pixels_by_centers_to_map(self._mean_logits, height, width)

  def probability_map(self, height, width):
    """Head-mean assignment, float32 [B, H, W, N] (sums to one over N)."""
    return _pixels_by_centers_to_map(
        attention.mean_over_heads(self._weights), height, width)

  def centers_from_pixels(self, attention_layer, pixel_value, training):
    """A V_p, [B, N, Dv], by the transposed retrieval."""
    return attention_layer.retrieve(self._weights, pixel_value,
                                    training=training, transpose_weights=True)

  def pixels_from_centers(self, attention_layer, center_value, training):
    """A^T V_c, [B, HW, Dv], by the plain retrieval."""
    return attention_layer.retrieve(self._weights, center_value,
                                    training=training)


def _pixels_by_centers_to_map(pixels_by_centers, height, width):
  """[B, HW, N] -> [B, H, W, N]."""
  shape = tf.shape(pixels_by_centers)
  return tf.reshape(pixels_by_centers, [shape[0], height, width, shape[2]])


def _separable_logits(parameters, height, width):
  """The two axis terms of the reference-mask logits.

  The squared distance is separable, (dy / sy)^2 + (dx / sx)^2, so the logits
  are r = rows[:, :, None] - columns[:, None], each term evaluated on its own
  axis.

  Returns:
    rows: float32 [B, height, N], level - 0.5 * ((y - cy) / sy)^2.
    columns: float32 [B, width, N], 0.5 * ((x - cx) / sx)^2 >= 0.
  """
  center, sigma, level = reference_mask.decode_parameters(parameters)

  def half_square_distance(size, index):
    """0.5 * ((t - c) / s)^2 along one axis, [B, size, N]."""
    offset = (reference_mask.axis_coordinates(size)[tf.newaxis, :, tf.newaxis]
              - center[:, tf.newaxis, :, index])
    return 0.5 * tf.square(offset / sigma[:, tf.newaxis, :, index])

  rows = level[:, tf.newaxis, :] - half_square_distance(height, 0)
  return rows, half_square_distance(width, 1)


def separable_log_reference_prior(parameters, height, width):
  """`reference_mask.log_reference_prior`, from separable tables.

  log sigmoid(r) = r - log(1 + e^r), and e^r = e^rows * e^-columns is
  separable too: one [B, H, W, N] product of two small tables and one log1p
  stand in for TensorFlow's softplus, which costs about four exps per
  element. Exact for every r: rows <= level <= 80 and columns >= 0 keep e^r
  finite, and where e^r underflows, log1p(0) = 0 leaves r, which is
  log sigmoid(r) to float precision.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    float32 [B, height, width, N], <= 0 (up to rounding).
  """
  rows, columns = _separable_logits(parameters, height, width)
  exp_logits = (tf.exp(rows)[:, :, tf.newaxis, :] *
                tf.exp(-columns)[:, tf.newaxis, :, :])
  logits = rows[:, :, tf.newaxis, :] - columns[:, tf.newaxis, :, :]
  return logits - tf.math.log1p(exp_logits)
