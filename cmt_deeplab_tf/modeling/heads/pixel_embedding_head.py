"""Pixel embeddings: the L2-normalised stride-4 features of the mask head.

MaX-DeepLab's pixel-space head (DeepLab2 `pixel_space_head` with head_channels
256, output 128, then `pixel_space_feature_batch_norm` and L2 normalisation). The
same normalised embedding feeds the mask logits and the instance-discrimination
loss, as in MaX-DeepLab.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.heads import conv_head
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import normalization


@gin.configurable(denylist=['embedding_channels', 'head_channels',
                            'activation'])
class PixelEmbeddingHead(tf_keras.layers.Layer):
  """Features [B, h, w, C] -> float32 unit-norm embeddings [B, h, w, D]."""

  def __init__(self, embedding_channels=128, head_channels=256,
               activation=activations.RELU, name='pixel_embedding_head'):
    """Initializes the head.

    Args:
      embedding_channels: Embedding width D.
      head_channels: Hidden width of the convolution head.
      activation: Activation of the convolution head, 'relu' or 'gelu'.
      name: The layer name.
    """
    super().__init__(name=name)
    self.embedding_channels = embedding_channels
    self._head = conv_head.SeparableConvHead(head_channels, embedding_channels,
                                             activation=activation,
                                             name='conv_head')
    self._norm = normalization.get_norm_layer(name='embedding_batch_norm')

  def call(self, features, training=None):
    embeddings = self._norm(self._head(features, training=training),
                            training=training)
    return tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=-1)
