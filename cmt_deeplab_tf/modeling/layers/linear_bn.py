"""A bias-free linear projection, a batch norm and an optional ReLU.

The token-wise (1x1) projection of MaX-DeepLab's memory path (DeepLab2's
`Conv1D(use_bn=True)`): it acts on the last axis of a tensor of any rank, e.g.
cluster centers [B, N, C] or flattened pixels [B, HW, C]:

  y = act(BN(x W))

with act ReLU or exact GeLU (`activations`; kMaX-DeepLab's layers use GeLU).

This is the plain form; `fast_path.FusedLinearBN` folds the inference batch
norm into the projection, with the same variables.
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import normalization


class LinearBN(tf_keras.layers.Layer):
  """Dense (no bias) -> batch norm over the last axis -> optional activation."""

  def __init__(self, units, use_relu=False, gamma_initializer='ones',
               kernel_initializer='he_normal', activation=activations.RELU,
               name=None):
    """Initializes the layer.

    Args:
      units: Number of output channels.
      use_relu: Whether the activation follows the batch norm.
      gamma_initializer: Initializer of the batch-norm scale; 'zeros' for the
        last norm of a residual branch (Goyal et al., 2017).
      kernel_initializer: Initializer of the projection.
      activation: 'relu' or 'gelu' (exact), see `activations`.
      name: The layer name.
    """
    super().__init__(name=name)
    self._units = units
    self._use_relu = use_relu
    self._activation = activations.get_activation(activation)
    self._dense = tf_keras.layers.Dense(
        units, use_bias=False, kernel_initializer=kernel_initializer,
        name='dense')
    self._norm = normalization.get_norm_layer(
        name='batch_norm', gamma_initializer=gamma_initializer)

  def call(self, inputs, training=None):
    """Projects [..., C_in] to [..., units].

    Args:
      inputs: A tensor [..., C_in], or a list of tensors [..., C_i] with the
        same leading shape, projected as their concatenation [..., sum C_i].
      training: Whether the batch norm uses batch statistics.

    Returns:
      [..., units].
    """
    if isinstance(inputs, (list, tuple)):
      inputs = tf.concat([tf.cast(x, inputs[0].dtype) for x in inputs], axis=-1)
    x = normalization.normalize_last_axis(self._norm, self._dense(inputs),
                                          training=training)
    return self._activation(x) if self._use_relu else x
