"""The auxiliary semantic head (training only).

MaX-DeepLab adds a per-pixel semantic loss through an auxiliary head that is not
used at inference. DeepLab2 feeds it through a separate ASPP decoder (15.86M
parameters for MaX-DeepLab-S) that it also runs, unused, at inference; for
CMT-DeepLab and MaX-DeepLab-S the head here reads the pixel decoder's stride-4
features, for kMaX-DeepLab either those or DeepLab2's decoder
(`semantic_decoder`, `kmax_deeplab.build_network`). The models call it only
when `training` is true. Its parameters are excluded from the paper's counts.

With `void_logit` the head also predicts a void logit, last: DeepLab2's COCO
semantic head has one output per dataset label, void (label 0) included
(`auxiliary_semantic_head.output_channels: 134`). Void is never a target
(void pixels are ignored), but its logit enters the softmax of the semantic
cross-entropy, as in DeepLab2.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.heads import conv_head
from cmt_deeplab_tf.modeling.layers import activations


@gin.configurable(denylist=['num_classes', 'head_channels', 'activation',
                            'void_logit'])
class SemanticHead(tf_keras.layers.Layer):
  """Features [B, h, w, D] -> float32 semantic logits [B, h, w, C (+ 1)]."""

  def __init__(self, num_classes, head_channels=256,
               activation=activations.RELU, void_logit=False,
               name='semantic_head'):
    """Initializes the head.

    Args:
      num_classes: Number of classes C; logit k is class k.
      head_channels: Hidden width of the convolution head.
      activation: Activation of the convolution head, 'relu' or 'gelu'.
      void_logit: Whether a void logit follows the C class logits.
      name: The layer name.
    """
    super().__init__(name=name)
    self._head = conv_head.SeparableConvHead(
        head_channels, num_classes + int(void_logit), activation=activation,
        name='conv_head')

  def call(self, features, training=None):
    return tf.cast(self._head(features, training=training), tf.float32)
