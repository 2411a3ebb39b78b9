"""A bias-free linear projection, a batch norm and an optional ReLU.

The token-wise (1x1) projection of MaX-DeepLab's memory path (DeepLab2's
`Conv1D(use_bn=True)`): it acts on the last axis of a tensor of any rank, e.g.
cluster centers [B, N, C] or flattened pixels [B, HW, C].

At inference the batch norm is an affine map per channel and is folded into
the projection: x W' + b with W' = W * scale and b = offset, one matmul with a
bias (which oneDNN fuses with the ReLU) instead of a matmul and two passes of
the norm over the output. Training runs the Keras batch norm.
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import normalization


class LinearBN(tf_keras.layers.Layer):
  """Dense (no bias) -> batch norm over the last axis -> optional ReLU."""

  def __init__(self, units, use_relu=False, gamma_initializer='ones',
               kernel_initializer='he_normal', name=None):
    """Initializes the layer.

    Args:
      units: Number of output channels.
      use_relu: Whether a ReLU follows the batch norm.
      gamma_initializer: Initializer of the batch-norm scale; 'zeros' for the
        last norm of a residual branch (Goyal et al., 2017).
      kernel_initializer: Initializer of the projection.
      name: The layer name.
    """
    super().__init__(name=name)
    self._units = units
    self._dense = tf_keras.layers.Dense(
        units, use_bias=False, kernel_initializer=kernel_initializer,
        name='dense')
    self._norm = normalization.get_norm_layer(
        name='batch_norm', gamma_initializer=gamma_initializer)
    self._use_relu = use_relu

  def call(self, inputs, training=None):
    """Projects [..., C_in] to [..., units].

    Args:
      inputs: A tensor [..., C_in], or a list of tensors [..., C_i] with the
        same leading shape, projected as their concatenation [..., sum C_i]
        (at inference without materialising it; e.g. pixel features and their
        two coordinate channels).
      training: Whether the batch norm uses batch statistics.

    Returns:
      [..., units].
    """
    parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    dtype = parts[0].dtype
    parts = [tf.cast(part, dtype) for part in parts]
    if normalization.is_inference(training):
      return self._folded_projection(parts)
    x = tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
    x = self._norm(self._dense(x), training=training)
    return tf.nn.relu(x) if self._use_relu else x

  def _folded_projection(self, parts):
    """sum_i parts[i] W'_i + offset, with the inference batch norm folded in."""
    channels = [part.shape[-1] for part in parts]
    ones = [1] * (parts[0].shape.rank - 1)  # The variables' input rank.
    if not self._dense.built:  # Create the kernel, under the dense's own name.
      self._dense(tf.zeros(ones + [sum(channels)], parts[0].dtype))
    scale, offset = normalization.inference_affine(self._norm,
                                                   ones + [self._units])
    kernel = tf.cast(self._dense.kernel, tf.float32) * scale
    kernels = tf.split(tf.cast(kernel, parts[0].dtype), channels, axis=0)
    leading = tf.shape(parts[0])[:-1]
    # grappler's remapper fuses the first MatMul + BiasAdd (+ ReLU), and the
    # Add of a further term, into one oneDNN kernel.
    projected = tf.nn.bias_add(
        tf.linalg.matmul(_flatten(parts[0]), kernels[0]),
        tf.cast(offset, kernels[0].dtype))
    for part, part_kernel in zip(parts[1:], kernels[1:]):
      projected += tf.linalg.matmul(_flatten(part), part_kernel)
    if self._use_relu:
      projected = (tf.nn.relu(projected) if len(parts) == 1 else
                   _relu_after_add(projected))
    return tf.reshape(projected, tf.concat([leading, [self._units]], axis=0))


def _relu_after_add(inputs):
  """ReLU as a Maximum, for a sum whose first term is a MatMul + BiasAdd.

  MatMul + BiasAdd + Add + Relu makes grappler's remapper fail on the whole
  graph (TF 2.20, oneDNN), which silently loses every fusion of the model; a
  Maximum is not part of that pattern.
  """
  return tf.maximum(inputs, tf.zeros([], inputs.dtype))


def _flatten(inputs):
  """[..., C] -> [prod(...), C]."""
  return tf.reshape(inputs, [-1, inputs.shape[-1]])
