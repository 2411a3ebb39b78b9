"""Batch normalization, synchronized across replicas when there are several.

Every norm of the model comes from `get_norm_layer`, so one gin binding sets the
momentum and epsilon everywhere. The defaults are DeepLab2's (trainer.proto:
`batchnorm_momentum=0.99`, `batchnorm_epsilon=0.001`), which MaX-DeepLab and
CMT-DeepLab train with.
"""
import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import recompute


class BatchNormalization(tf_keras.layers.BatchNormalization):
  """Keras' batch norm, updating its moving statistics once per recomputed call.

  When the backward pass reruns a recomputed block (`recompute`), the norm
  normalises with the batch statistics again but does not move its moving mean
  and variance a second time. Variables and checkpoints are Keras'.
  """

  def add_update(self, updates):
    if not recompute.is_recomputing():
      super().add_update(updates)


def _has_several_replicas():
  return (tf.distribute.has_strategy() and
          tf.distribute.get_strategy().num_replicas_in_sync > 1)


@gin.configurable(denylist=['name', 'axis', 'dtype', 'gamma_initializer'])
def get_norm_layer(name=None, momentum=0.99, epsilon=1e-3, synchronized=None,
                   **kwargs):
  """Returns a batch norm, synchronized across the replicas of a strategy.

  A synchronized norm all-reduces its batch statistics over the replicas of the
  current `tf.distribute` strategy. Without several replicas the all-reduce
  machinery only costs graph size and tracing time (about 3x the ops of a plain
  norm), so by default the norm is synchronized only when it is created inside
  the scope of a strategy with more than one replica, as model building is in
  training.

  Args:
    name: The layer name.
    momentum: Momentum of the moving statistics.
    epsilon: Added to the variance before the square root.
    synchronized: True or False to force; None synchronizes exactly when the
      current strategy has several replicas.
    **kwargs: Passed to `tf_keras.layers.BatchNormalization`, e.g. `axis` or
      `gamma_initializer`.

  Returns:
    A `BatchNormalization` (a `tf_keras.layers.BatchNormalization`) layer.
  """
  if synchronized is None:
    synchronized = _has_several_replicas()
  return BatchNormalization(
      momentum=momentum, epsilon=epsilon, synchronized=synchronized, name=name,
      **kwargs)


def normalize_last_axis(norm, inputs, training=None):
  """`norm(inputs)` over the last axis; a [B, L, C] input runs as [B, L, 1, C].

  At rank 4 Keras uses TensorFlow's fused batch-norm kernel: one op forward and one
  backward, instead of the moments, normalisation and gradient ops of its generic
  path and their [B, L, C] temporaries (for flattened stride-4 pixels, the largest
  tensors of a recomputed CMT layer). Outputs, gradients, the moving mean and the
  variables are the generic path's; the moving variance moves towards the
  unbiased batch variance, as for every rank-4 (conv) norm, n / (n - 1) times the
  generic path's biased one, n = B * L (0.8% for 128 centers at batch 1, under
  0.01% for stride-4 pixels).

  Args:
    norm: A batch norm over the last axis, built (or to be built) by this function.
    inputs: [..., C]; rank 3 is viewed as rank 4.
    training: Training mode.

  Returns:
    The normalised [..., C].
  """
  if inputs.shape.rank != 3:
    return norm(inputs, training=training)
  return tf.squeeze(norm(inputs[:, :, tf.newaxis, :], training=training), axis=2)


def is_inference(training):
  """Whether `training` (None, a bool or a tensor) is statically inference.

  None counts as inference, as for a Keras batch norm outside `fit`; a tensor
  is left to the Keras layer.
  """
  return training is None or (isinstance(training, bool) and not training)


def inference_affine(norm, input_shape):
  """(scale, offset) of a batch norm at inference, over its normalised axis.

  BN(x) = (x - mean) * gamma / sqrt(var + eps) + beta = x * scale + offset,
  so the norm folds into an adjacent linear map. A norm not built yet is built
  by a call on zeros of `input_shape`, under its own name.

  Returns:
    float32 (scale, offset), each [channels] of the norm's axis.
  """
  if not norm.built:
    normalize_last_axis(norm, tf.zeros(input_shape), training=False)
  scale = tf.math.rsqrt(norm.moving_variance + norm.epsilon)
  if norm.scale:
    scale *= norm.gamma
  offset = -norm.moving_mean * scale
  if norm.center:
    offset += norm.beta
  return scale, offset
