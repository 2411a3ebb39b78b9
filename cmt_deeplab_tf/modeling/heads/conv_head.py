"""A depthwise-separable convolution head on stride-4 pixel features.

DeepLab2's `PanopticDeepLabSingleHead` with `conv_type='depthwise_separable_conv'`
(Panoptic-DeepLab, Cheng et al., CVPR 2020), used by MaX-DeepLab for both its
pixel-space head and its auxiliary semantic head: a `SeparableConvBN` (5x5
depthwise conv + BN + ReLU, 1x1 conv to `head_channels` + BN + ReLU), then a
1x1 conv (with bias) to the outputs; kMaX-DeepLab's heads use GeLU instead of
ReLU.
"""
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import separable_conv


class SeparableConvHead(separable_conv.SeparableConvBN):
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
    super().__init__(head_channels, kernel_size=kernel_size,
                     activation=activation, name=name)
    self._output = tf_keras.layers.Conv2D(
        output_channels, 1, kernel_initializer='he_normal', name='output')

  def call(self, features, training=None):
    return self._output(super().call(features, training=training))
