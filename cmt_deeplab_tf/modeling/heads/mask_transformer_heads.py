"""The inference heads of a mask transformer, shared by all its layers.

Groups the pixel-embedding head (stride-4 features -> unit-norm embeddings), the
class head and the mask head. The final prediction and the deep-supervision
prediction of every earlier transformer layer use the same weights: each layer's
cluster centers are classified and dotted with the final pixel embeddings
(as DETR / MaskFormer auxiliary predictions).

With the memory policy's kind 'heads' (`build_model.recompute`), the model
recomputes the pixel-embedding head and each call in the backward pass of training: each
layer's prediction then keeps only its [B, h, w, N] mask logits (the loss's
input), not the stride-4 activations of the pixel-embedding head and the mask
head's batch-norm input.
"""
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.modeling.heads import class_head
from cmt_deeplab_tf.modeling.heads import mask_head
from cmt_deeplab_tf.modeling.heads import pixel_embedding_head
from cmt_deeplab_tf.modeling.layers import activations


class MaskTransformerHeads(tf_keras.layers.Layer):
  """Class, mask and pixel-embedding heads."""

  def __init__(self, num_classes, embedding_channels=128, head_channels=256,
               center_feature_channels=256, activation=activations.RELU,
               name='heads'):
    """Initializes the heads.

    Args:
      num_classes: Number of classes C (the class head predicts C + 1).
      embedding_channels: Width D of pixel and mask embeddings (MaX: 128).
      head_channels: Hidden width of the pixel-embedding head (MaX: 256).
      center_feature_channels: Width of the class / mask center projections
        (MaX: 256); None for none (kMaX's per-layer predictions).
      activation: Activation of every head, 'relu' (MaX, CMT) or 'gelu' (kMaX).
      name: The layer name.
    """
    super().__init__(name=name)
    # Stride-4 features [B, h, w, C] -> PIXEL_EMBEDDINGS [B, h, w, D].
    self.pixel_embedding_head = pixel_embedding_head.PixelEmbeddingHead(
        embedding_channels, head_channels, activation=activation)
    self.class_head = class_head.ClassHead(num_classes,
                                           center_feature_channels,
                                           activation=activation)
    self.mask_head = mask_head.MaskHead(embedding_channels,
                                        center_feature_channels,
                                        activation=activation)

  def call(self, pixel_embeddings, centers, training=None):
    """Returns {CLASS_LOGITS [B, N, C + 1], MASK_LOGITS [B, h, w, N]}."""
    return {
        common.CLASS_LOGITS: self.class_head(centers, training=training),
        common.MASK_LOGITS: self.mask_head(pixel_embeddings, centers,
                                           training=training),
    }
