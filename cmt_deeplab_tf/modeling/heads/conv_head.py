"""A depthwise-separable convolution head on stride-4 pixel features.

DeepLab2's `PanopticDeepLabSingleHead` with `conv_type='depthwise_separable_conv'`
(Panoptic-DeepLab, Cheng et al., CVPR 2020), used by MaX-DeepLab for both its
pixel-space head and its auxiliary semantic head: 5x5 depthwise conv + BN + ReLU,
1x1 conv to `head_channels` + BN + ReLU, 1x1 conv (with bias) to the outputs;
kMaX-DeepLab's heads use GeLU instead of ReLU.
"""
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import normalization


class SeparableConvHead(tf_keras.layers.Layer):
  """[B, h, w, C] -> [B, h, w, output_channels]."""

  def __init__(self, head_channels, output_channels, kernel_size=5,
               activation=activations.RELU, name=None):
    """Initializes the head.

    Args:
      head_channels: Width of the hidden 1x1 convolution.
      output_channels: Number of outputs per pixel.
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
    self._pointwise = conv_bn.ConvBN(head_channels, 1, activation=activation,
                                     name='pointwise')
    self._output = tf_keras.layers.Conv2D(
        output_channels, 1, kernel_initializer='he_normal', name='output')

  def call(self, features, training=None):
    x = self._activation(self._depthwise_norm(self._depthwise(features),
                                        training=training))
    x = self._pointwise(x, training=training)
    return self._output(x)
