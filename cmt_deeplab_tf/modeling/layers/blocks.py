"""Residual blocks of the backbones: the ResNet bottleneck and the axial block.

Both blocks take activated features and return act(shortcut +
drop_path(residual)), or with `activate_output=False` the sum itself. DeepLab2
leaves block outputs unactivated and applies the activation at the start of the
next block; the two are the same function. The unactivated sum matters where
something is added to it before the next activation: the residual update of a
transformer layer after the block and the skip input of a decoder fusion, both
of which DeepLab2 applies to the unactivated features. The activation is ReLU or
exact GeLU (`activations`). The last batch norm of each residual branch starts
with gamma = 0, so every block starts as the identity (Goyal et al., 2017), as
in DeepLab2.

Whether the backward pass recomputes a block is the model's memory policy
(`build_model.recompute`, `recompute_policy`), applied by the forward loop.
"""
import gin
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import axial_attention
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import drop_path


class _ResidualBlock(tf_keras.layers.Layer):
  """The shortcut, drop path and output activation shared by the blocks below."""

  def __init__(self, output_channels, strides, drop_path_rate, activation,
               name):
    if strides < 1:
      raise ValueError(f'{type(self).__name__} strides must be >= 1, got '
                       f'strides={strides}.')
    super().__init__(name=name)
    self._output_channels = output_channels
    self._strides = strides
    self._activation = activations.get_activation(activation)
    self._drop_path = drop_path.DropPath(drop_path_rate, name='drop_path')
    self._projection = None

  def build(self, input_shape):
    if input_shape[-1] != self._output_channels:
      self._projection = conv_bn.ConvBN(
          self._output_channels, 1, strides=self._strides, use_relu=False,
          name='shortcut')
    super().build(input_shape)

  def _residual(self, inputs, training):
    raise NotImplementedError

  def call(self, inputs, training=None, activate_output=True):
    """Runs the block.

    Args:
      inputs: A [batch, height, width, channels] activated tensor.
      training: Whether batch norms use batch statistics and drop path drops.
      activate_output: Apply the activation to the output; False returns
        shortcut + residual (DeepLab2's block output).

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides),
      output_channels] tensor, activated if `activate_output`.
    """
    if self._projection is not None:
      shortcut = self._projection(inputs, training=training)
    elif self._strides > 1:
      shortcut = inputs[:, ::self._strides, ::self._strides, :]
    else:  # Not a stride-1 slice: its gradient would be a copy.
      shortcut = inputs
    residual = self._drop_path(self._residual(inputs, training),
                               training=training)
    outputs = shortcut + residual
    return self._activation(outputs) if activate_output else outputs


class BottleneckBlock(_ResidualBlock):
  """ResNet bottleneck: 1x1, 3x3 (strided or atrous), 1x1 convolutions.

  K. He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. The
  stride sits in the 3x3 convolution (ResNet v1.5, as DeepLab2).
  """

  def __init__(self, filters, strides=1, atrous_rate=1, drop_path_rate=0.0,
               activation=activations.RELU, name=None):
    """Initializes the block.

    Args:
      filters: Width of the bottleneck; the block outputs 4 * filters channels.
      strides: Stride of the 3x3 convolution and of the shortcut.
      atrous_rate: Dilation of the 3x3 convolution.
      drop_path_rate: Probability of dropping the residual branch in training.
      activation: 'relu' or 'gelu', see `activations`.
      name: The layer name.
    """
    super().__init__(4 * filters, strides, drop_path_rate, activation, name)
    self._convs = [
        conv_bn.ConvBN(filters, 1, activation=activation, name='conv1'),
        conv_bn.ConvBN(filters, 3, strides=strides, atrous_rate=atrous_rate,
                       activation=activation, name='conv2'),
        conv_bn.ConvBN(4 * filters, 1, use_relu=False,
                       gamma_initializer='zeros', name='conv3'),
    ]

  def _residual(self, inputs, training):
    x = inputs
    for conv in self._convs:
      x = conv(x, training=training)
    return x


@gin.configurable(denylist=['filters', 'strides', 'drop_path_rate',
                            'activation', 'name'])
class AxialBlock(_ResidualBlock):
  """Axial-attention bottleneck: 1x1 conv, height then width attention, 1x1 conv.

  The 3x3 convolution of the bottleneck is replaced by a height-axis and a
  width-axis attention layer (Axial-DeepLab, ECCV 2020, Fig. 3); DeepLab2's
  `AxialBlock` with `attention_type='axial'`. With `strides > 1`, each axis is
  subsampled right after its attention.
  """

  def __init__(self, filters, strides=1, drop_path_rate=0.0,
               bottleneck_expansion=2, key_expansion=1, value_expansion=2,
               activation=activations.RELU, name=None):
    """Initializes the block.

    Args:
      filters: Base width; the block outputs 4 * filters channels.
      strides: Output stride of the block.
      drop_path_rate: Probability of dropping the residual branch in training.
      bottleneck_expansion: The first 1x1 conv has filters * this channels
        (DeepLab2 `attention_bottleneck_expansion=2`).
      key_expansion: Query/key depth of the attention is filters * this.
      value_expansion: Value depth of the attention is filters * this.
      activation: 'relu' or 'gelu', see `activations`.
      name: The layer name.
    """
    super().__init__(4 * filters, strides, drop_path_rate, activation, name)
    key_depth = int(round(filters * key_expansion))
    value_depth = int(round(filters * value_expansion))
    self._conv1 = conv_bn.ConvBN(int(round(filters * bottleneck_expansion)), 1,
                                 activation=activation, name='conv1')
    self._height_attention = axial_attention.AxialAttention(
        axial_attention.HEIGHT, key_depth, value_depth, name='height_axis')
    self._width_attention = axial_attention.AxialAttention(
        axial_attention.WIDTH, key_depth, value_depth, name='width_axis')
    self._conv3 = conv_bn.ConvBN(4 * filters, 1, use_relu=False,
                                 gamma_initializer='zeros', name='conv3')

  def _residual(self, inputs, training):
    stride = self._strides
    x = self._conv1(inputs, training=training)
    x = self._height_attention(x, training=training)
    if stride > 1:
      x = x[:, ::stride]
    x = self._width_attention(x, training=training)
    if stride > 1:
      x = x[:, :, ::stride]
    return self._conv3(self._activation(x), training=training)
