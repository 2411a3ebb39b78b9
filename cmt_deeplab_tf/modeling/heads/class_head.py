"""The class head: C + 1 logits (the last is no-object) per cluster center.

As MaX-DeepLab (DeepLab2 `_class_feature_extra` + `transformer_class_head`): a
1x1 projection + BN + ReLU of the centers, then a linear classifier whose
no-object logit starts with prior probability 0.9 (focal-loss style bias).
kMaX-DeepLab's per-layer auxiliary predictions classify the centers without the
projection (`feature_channels=None`) and its projection uses GeLU.
"""
import math

import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import linear_bn


@gin.configurable(denylist=['num_classes', 'feature_channels', 'activation'])
class ClassHead(tf_keras.layers.Layer):
  """Centers [B, N, Cc] -> float32 class logits [B, N, num_classes + 1]."""

  def __init__(self, num_classes, feature_channels=256, void_prior=0.9,
               activation=activations.RELU, name='class_head'):
    """Initializes the head.

    Args:
      num_classes: Number of classes C (without no-object).
      feature_channels: Width of the center projection; None classifies the
        centers themselves.
      void_prior: Initial softmax probability of the no-object class.
      activation: Activation of the projection, 'relu' or 'gelu'.
      name: The layer name.

    Raises:
      ValueError: On a non-positive `num_classes` or a `void_prior` outside
        (0, 1).
    """
    if num_classes < 1:
      raise ValueError(f'num_classes must be positive, got {num_classes}.')
    if not 0.0 < void_prior < 1.0:
      raise ValueError(f'void_prior must be in (0, 1), got {void_prior}.')
    super().__init__(name=name)
    self._feature = None
    if feature_channels is not None:
      self._feature = linear_bn.LinearBN(feature_channels, use_relu=True,
                                         activation=activation,
                                         name='class_feature')
    void_bias = math.log(num_classes * void_prior / (1.0 - void_prior))
    self._classifier = tf_keras.layers.Dense(
        num_classes + 1,
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.01),
        bias_initializer=tf_keras.initializers.Constant(
            [0.0] * num_classes + [void_bias]),
        name='classifier')

  def call(self, centers, training=None):
    if self._feature is not None:
      centers = self._feature(centers, training=training)
    logits = self._classifier(centers)
    return tf.cast(logits, tf.float32)
