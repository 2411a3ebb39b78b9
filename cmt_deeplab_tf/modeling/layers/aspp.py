"""Atrous spatial pyramid pooling (ASPP) with image pooling.

DeepLabv3's ASPP (Chen et al., "Rethinking Atrous Convolution for Semantic
Image Segmentation", 2017; the encoder of DeepLabv3+, Chen et al., ECCV 2018),
as DeepLab2's `ASPP` builds it: five parallel branches on the same features,
  a 1x1 ConvBN,
  three 3x3 atrous ConvBNs (rates r1, r2, r3; DeepLab2: 6, 12, 18),
  image pooling: the global spatial mean, a 1x1 ConvBN, broadcast back to
  h x w (DeepLab2 resizes the 1x1 map with align corners: the same constant),
concatenated (5 * channels) and projected by a 1x1 ConvBN, then dropout
(training only). Every ConvBN is bias-free with batch norm and activation.

The pooling is global at training and at inference: DeepLab2's kMaX-DeepLab
never sets the tiled pooling (`set_pool_size`) that its Panoptic-DeepLab uses
at evaluation. The dropout masks are `random_draws` (seeded in the trainer).
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling import random_draws
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import conv_bn
from cmt_deeplab_tf.modeling.layers import recompute

NUM_ATROUS_RATES = 3
_BRANCHES = 5


class ASPP(tf_keras.layers.Layer):
  """[B, h, w, C] -> [B, h, w, channels]."""

  def __init__(self, channels, atrous_rates=(6, 12, 18), dropout_rate=0.1,
               activation=activations.RELU, name='aspp'):
    """Initializes the layer.

    Args:
      channels: Output channels of every branch and of the projection.
      atrous_rates: The three dilation rates of the 3x3 branches.
      dropout_rate: Dropout after the projection in training, in [0, 1).
      activation: 'relu' or 'gelu' (exact), see `activations`.
      name: The layer name.

    Raises:
      ValueError: If there are not three positive rates or the dropout rate
        is outside [0, 1).
    """
    rates = tuple(atrous_rates)
    if len(rates) != NUM_ATROUS_RATES or min(rates) < 1:
      raise ValueError(f'ASPP takes {NUM_ATROUS_RATES} positive atrous rates, '
                       f'got atrous_rates={atrous_rates}.')
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f'ASPP dropout_rate must be in [0, 1), got '
                       f'{dropout_rate}.')
    super().__init__(name=name)
    self.atrous_rates = rates
    self.dropout_rate = dropout_rate
    self.pointwise = conv_bn.ConvBN(channels, 1, activation=activation,
                                    name='pointwise')
    self.atrous = [conv_bn.ConvBN(channels, 3, atrous_rate=rate,
                                  activation=activation, name=f'atrous{i + 1}')
                   for i, rate in enumerate(rates)]
    self.pooling = conv_bn.ConvBN(channels, 1, activation=activation,
                                  name='pooling')
    self.projection = conv_bn.ConvBN(channels, 1, activation=activation,
                                     name='projection')

  def call(self, features, training=None):
    """Runs the layer.

    Args:
      features: [B, h, w, C].
      training: Batch statistics and dropout.

    Returns:
      [B, h, w, channels].
    """
    pooled = self.pooling(tf.reduce_mean(features, axis=[1, 2], keepdims=True),
                          training=training)
    pooled = tf.broadcast_to(pooled, tf.concat(
        [tf.shape(features)[:3], tf.shape(pooled)[3:]], 0))
    branches = [self.pointwise(features, training=training)]
    branches += [conv(features, training=training) for conv in self.atrous]
    branches.append(pooled)
    x = self.projection(tf.concat(branches, axis=-1), training=training)
    return self._dropout(x, training)

  def _dropout(self, x, training):
    """Zeroes each element with probability `dropout_rate`, scales the rest."""
    if not training or self.dropout_rate == 0.0:
      return x
    keep_prob = 1.0 - self.dropout_rate
    keep = recompute.replayable(lambda: tf.floor(
        keep_prob + random_draws.uniform(tf.shape(x))))
    return x * tf.cast(keep / keep_prob, x.dtype)
