"""Convolution + batch norm + optional activation, with DeepLab's centred padding.

Strided convolutions pad the same amount on both sides (as DeepLab2's
`Conv2DSame`), unlike Keras 'same' padding, which pads more at the bottom-right
for even sizes. Output pixel i of a stride-s layer is then centred on input pixel
s * i at every input size, so stride-4 features line up with the `x[:, ::4, ::4]`
slicing of full-resolution targets.
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import normalization


class ConvBN(tf_keras.layers.Layer):
  """A bias-free 2-D convolution, a batch norm and an optional activation."""

  def __init__(self, filters, kernel_size, strides=1, atrous_rate=1,
               use_relu=True, gamma_initializer='ones',
               activation=activations.RELU, name=None):
    """Initializes the layer.

    Args:
      filters: Number of output channels.
      kernel_size: Size of the square kernel.
      strides: Spatial stride; output size is ceil(input / strides).
      atrous_rate: Dilation rate of the kernel.
      use_relu: Whether the activation follows the batch norm.
      gamma_initializer: Initializer of the batch-norm scale; 'zeros' for the
        last norm of a residual branch (Goyal et al., 2017).
      activation: 'relu' or 'gelu' (exact), see `activations`.
      name: The layer name.

    Raises:
      ValueError: If strides > 1 is combined with atrous_rate > 1.
    """
    if strides > 1 and atrous_rate > 1:
      raise ValueError(f'ConvBN takes strides > 1 or atrous_rate > 1, not both; '
                       f'got strides={strides}, atrous_rate={atrous_rate}.')
    super().__init__(name=name)
    self._padding = 0
    if strides > 1:
      self._padding = (kernel_size - 1) // 2
    self._conv = tf_keras.layers.Conv2D(
        filters, kernel_size, strides=strides,
        padding='valid' if strides > 1 else 'same',
        dilation_rate=atrous_rate, use_bias=False,
        kernel_initializer='he_normal', name='conv')
    self._norm = normalization.get_norm_layer(
        name='batch_norm', gamma_initializer=gamma_initializer)
    self._activation = activations.get_activation(activation)
    self._use_relu = use_relu

  def call(self, inputs, training=None):
    """Runs the layer.

    Args:
      inputs: A [batch, height, width, channels] tensor.
      training: Whether the batch norm uses batch statistics.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides), filters] tensor.
    """
    x = inputs
    if self._padding:
      pad = self._padding
      x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    x = self._norm(self._conv(x), training=training)
    if self._use_relu:
      x = self._activation(x)
    return x
