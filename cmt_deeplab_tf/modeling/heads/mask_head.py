"""The mask head: mask logits = mask embeddings . pixel embeddings.

As MaX-DeepLab (DeepLab2 `_mask_feature_extra`, `transformer_mask_head` and
`pixel_space_mask_batch_norm`): each center is projected (1x1 + BN + ReLU, then
1x1 + BN) to a mask embedding; its dot product with every unit-norm pixel
embedding is batch-normalised by one shared scalar BN (gamma initialised at 0.1)
so that no mask slot gets its own bias. kMaX-DeepLab's per-layer auxiliary
predictions embed the centers without the first projection
(`feature_channels=None`) and its projection uses GeLU.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import linear_bn
from cmt_deeplab_tf.modeling.layers import normalization


@gin.configurable(denylist=['embedding_channels', 'feature_channels',
                            'activation'])
class MaskHead(tf_keras.layers.Layer):
  """(pixel embeddings [B, h, w, D], centers [B, N, Cc]) -> [B, h, w, N]."""

  def __init__(self, embedding_channels=128, feature_channels=256,
               activation=activations.RELU, name='mask_head'):
    """Initializes the head.

    Args:
      embedding_channels: Mask-embedding width D (= pixel embedding width).
      feature_channels: Width of the center projection; None embeds the
        centers themselves.
      activation: Activation of the projection, 'relu' or 'gelu'.
      name: The layer name.
    """
    super().__init__(name=name)
    self._feature = None
    if feature_channels is not None:
      self._feature = linear_bn.LinearBN(feature_channels, use_relu=True,
                                         activation=activation,
                                         name='mask_feature')
    self._embedding = linear_bn.LinearBN(embedding_channels,
                                         name='mask_embedding')
    self._logit_norm = normalization.get_norm_layer(
        name='mask_logit_batch_norm', dtype='float32',
        gamma_initializer=tf_keras.initializers.Constant(0.1))

  def call(self, pixel_embeddings, centers, training=None):
    """Returns float32 mask logits [B, h, w, N]."""
    if self._feature is not None:
      centers = self._feature(centers, training=training)
    kernels = self._embedding(centers, training=training)
    logits = tf.einsum('bhwd,bnd->bhwn', pixel_embeddings,
                       tf.cast(kernels, pixel_embeddings.dtype))
    logits = self._logit_norm(logits[..., tf.newaxis], training=training)
    return tf.squeeze(logits, axis=-1)
