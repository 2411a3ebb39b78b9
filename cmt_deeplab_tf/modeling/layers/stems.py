"""The inception ("beta") stem of ResNet-50-beta and Axial-ResNet.

Three 3x3 convolutions (64, 64, 128 channels), the first with stride 2, each
followed by batch norm and ReLU (Szegedy et al., "Inception-v4", AAAI 2017; the
`resnet_beta` stem of DeepLab and Axial-DeepLab, ECCV 2020). As in DeepLab2 there
is no max-pool: the stem has output stride 2 and the first block of stage 2 has
stride 2 instead.
"""
import gin
import tf_keras

from cmt_deeplab_tf.modeling.layers import conv_bn


@gin.configurable(denylist=['width_multiplier'])
class InceptionStem(tf_keras.layers.Layer):
  """Three 3x3 conv-BN-ReLU layers; output stride 2."""

  def __init__(self, width_multiplier=1.0, name='stem'):
    """Initializes the stem.

    Args:
      width_multiplier: Scales the channels (64, 64, 128).
      name: The layer name.

    Raises:
      ValueError: If `width_multiplier` is not positive.
    """
    if width_multiplier <= 0:
      raise ValueError('InceptionStem width_multiplier must be positive, got '
                       f'width_multiplier={width_multiplier}.')
    super().__init__(name=name)
    narrow = int(round(64 * width_multiplier))
    self._convs = [
        conv_bn.ConvBN(narrow, 3, strides=2, name='conv1'),
        conv_bn.ConvBN(narrow, 3, name='conv2'),
        conv_bn.ConvBN(2 * narrow, 3, name='conv3'),
    ]
    self.output_channels = 2 * narrow

  def call(self, images, training=None):
    """Runs the stem.

    Args:
      images: A [batch, height, width, 3] tensor.
      training: Whether batch norms use batch statistics.

    Returns:
      A [batch, ceil(height / 2), ceil(width / 2), 128 * width_multiplier]
      tensor, activated.
    """
    x = images
    for conv in self._convs:
      x = conv(x, training=training)
    return x
