"""The auxiliary semantic head (training only).

MaX-DeepLab adds a per-pixel semantic loss through an auxiliary head that is not
used at inference. DeepLab2 feeds it through a separate ASPP decoder (15.86M
parameters for MaX-DeepLab-S) that it also runs, unused, at inference; here the
head reads the pixel decoder's stride-4 features and the models call it only
when `training` is true. Its parameters are excluded from the paper's counts.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.heads import conv_head
from cmt_deeplab_tf.modeling.layers import activations


@gin.configurable(denylist=['num_classes', 'head_channels', 'activation'])
class SemanticHead(tf_keras.layers.Layer):
  """Features [B, h, w, C] -> float32 semantic logits [B, h, w, num_classes]."""

  def __init__(self, num_classes, head_channels=256,
               activation=activations.RELU, name='semantic_head'):
    """Initializes the head.

    Args:
      num_classes: Number of classes C (void is ignored, not predicted).
      head_channels: Hidden width of the convolution head.
      activation: Activation of the convolution head, 'relu' or 'gelu'.
      name: The layer name.
    """
    super().__init__(name=name)
    self._head = conv_head.SeparableConvHead(head_channels, num_classes,
                                             activation=activation,
                                             name='conv_head')

  def call(self, features, training=None):
    return tf.cast(self._head(features, training=training), tf.float32)
