"""The stems of the backbones: the inception ("beta") stem and ResNet's stem.

Inception stem (ResNet-50-beta, Axial-ResNet, MaX-DeepLab): three 3x3
convolutions (64, 64, 128 channels), the first with stride 2, each followed by
batch norm and the activation (Szegedy et al., "Inception-v4", AAAI 2017; the
`resnet_beta` stem of DeepLab and Axial-DeepLab, ECCV 2020).

ResNet stem (He et al., CVPR 2016): one 7x7 convolution with stride 2 (64
channels), batch norm and the activation; the stem of DeepLab2's `resnet50`
(the ImageNet checkpoint `resnet50_imagenet1k`, kMaX-DeepLab's ResNet-50).

As in DeepLab2 neither stem has a max-pool: both have output stride 2 and the
first block of stage 2 strides instead (DeepLab2 `ResNet50`: "We replace the
strided max pooling layer in the stem by applying strided convolution in the
immediate next residual block").

Whether the backward pass recomputes the stem (its stride-2 activations are the
largest tensors of the backbone) is the model's memory policy
(`build_model.recompute`, kind 'stem').
"""
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import conv_bn

INCEPTION = 'inception'
RESNET = 'resnet'
STEM_TYPES = (INCEPTION, RESNET)


def _check_width(class_name, width_multiplier):
  if width_multiplier <= 0:
    raise ValueError(f'{class_name} width_multiplier must be positive, got '
                     f'width_multiplier={width_multiplier}.')


class InceptionStem(tf_keras.layers.Layer):
  """Three 3x3 conv-BN-activation layers; output stride 2."""

  def __init__(self, width_multiplier=1.0, activation=activations.RELU,
               name='stem'):
    """Initializes the stem.

    Args:
      width_multiplier: Scales the channels (64, 64, 128).
      activation: 'relu' or 'gelu', see `activations`.
      name: The layer name.

    Raises:
      ValueError: If `width_multiplier` is not positive.
    """
    _check_width('InceptionStem', width_multiplier)
    super().__init__(name=name)
    narrow = int(round(64 * width_multiplier))
    self._convs = [
        conv_bn.ConvBN(narrow, 3, strides=2, activation=activation,
                       name='conv1'),
        conv_bn.ConvBN(narrow, 3, activation=activation, name='conv2'),
        conv_bn.ConvBN(2 * narrow, 3, activation=activation, name='conv3'),
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


class ResNetStem(tf_keras.layers.Layer):
  """One 7x7 conv-BN-activation layer with stride 2, no max-pool."""

  def __init__(self, width_multiplier=1.0, activation=activations.RELU,
               name='stem'):
    """Initializes the stem.

    Args:
      width_multiplier: Scales the 64 channels.
      activation: 'relu' or 'gelu', see `activations`.
      name: The layer name.

    Raises:
      ValueError: If `width_multiplier` is not positive.
    """
    _check_width('ResNetStem', width_multiplier)
    super().__init__(name=name)
    self.output_channels = int(round(64 * width_multiplier))
    self._conv = conv_bn.ConvBN(self.output_channels, 7, strides=2,
                                activation=activation, name='conv1')

  def call(self, images, training=None):
    """[batch, H, W, 3] -> activated [batch, ceil(H / 2), ceil(W / 2), 64w]."""
    return self._conv(images, training=training)


def build_stem(stem_type, width_multiplier=1.0, activation=activations.RELU):
  """The stem called `stem_type` ('inception' or 'resnet').

  Raises:
    ValueError: On an unknown `stem_type`.
  """
  if stem_type == INCEPTION:
    return InceptionStem(width_multiplier, activation)
  if stem_type == RESNET:
    return ResNetStem(width_multiplier, activation)
  raise ValueError(f'stem_type must be one of {STEM_TYPES}, got '
                   f'{stem_type!r}.')
