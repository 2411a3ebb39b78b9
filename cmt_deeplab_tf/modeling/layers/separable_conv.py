"""A depthwise-separable convolution with batch norms and activations.

DeepLab2's `SeparableConv2DSame` with batch norm and activation, the
convolution of the Panoptic-DeepLab decoder's fusion layers and heads
(Panoptic-DeepLab, Cheng et al., CVPR 2020): a k x k depthwise convolution +
BN + activation, then a 1x1 convolution + BN + activation. Stride 1, 'same'
padding.
"""
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import normalization


class SeparableConvBN(tf_keras.layers.Layer):
  """[B, h, w, C] -> [B, h, w, filters]."""

  def __init__(self, filters, kernel_size=5, activation=activations.RELU,
               name=None):
    """Initializes the layer.

    Args:
      filters: Output channels of the pointwise (1x1) convolution.
      kernel_size: Size of the depthwise kernel.
      activation: 'relu' or 'gelu' (exact), see `activations`.
      name: The layer name.
    """
    super().__init__(name=name)
    self._depthwise = tf_keras.layers.DepthwiseConv2D(
        kernel_size, padding='same', use_bias=False,
        depthwise_initializer='he_normal', name='depthwise')
    self._depthwise_norm = normalization.get_norm_layer(
        name='depthwise_batch_norm')
    self._activation = activations.get_activation(activation)
    self._pointwise = conv_bn.ConvBN(filters, 1, activation=activation,
                                     name='pointwise')

  def call(self, features, training=None):
    x = self._activation(self._depthwise_norm(self._depthwise(features),
                                              training=training))
    return self._pointwise(x, training=training)
