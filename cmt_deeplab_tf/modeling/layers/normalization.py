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
  # expand_dims, not inputs[:, :, tf.newaxis]: a strided slice's gradient is a
  # copy (StridedSliceGrad), a reshape's is free.
  return tf.squeeze(norm(tf.expand_dims(inputs, 2), training=training), axis=2)


def is_inference(training):
  """Whether `training` (None, a bool or a tensor) is statically inference.

  None counts as inference, as for a Keras batch norm outside `fit`; a tensor
  is left to the Keras layer.
  """
  return training is None or (isinstance(training, bool) and not training)


def build_by_call(norm, input_shape):
  """Builds `norm`, if not built yet, by an inference call on zeros of
  `input_shape`: its variables get their names under its own scope, as from a
  call on real inputs."""
  if not norm.built:
    normalize_last_axis(norm, tf.zeros(input_shape), training=False)


def batch_affine(norm, mean, variance):
  """(scale, offset) of a batch norm normalising by `mean` and `variance`
  [channels]: BN(x) = x * scale + offset. In training the batch's statistics
  (computed by the caller, e.g. without materialising x), at inference the
  moving ones (`inference_affine`)."""
  scale = tf.math.rsqrt(variance + norm.epsilon)
  if norm.scale:
    scale *= norm.gamma
  offset = -mean * scale
  if norm.center:
    offset += norm.beta
  return scale, offset


def update_moving_statistics(norm, mean, variance, count):
  """Moves `norm`'s moving statistics towards a batch's, as Keras' call would.

  moving <- moving - (1 - momentum) (moving - batch), through the norm's
  `add_update` (so not again in a recomputation). The variance moves towards
  the unbiased `count / (count - 1) * variance` where Keras' fused kernel
  would run (`norm.fused`), else towards the biased one.

  Args:
    norm: A built `BatchNormalization`.
    mean: float32 [channels] batch mean.
    variance: float32 [channels] biased batch variance.
    count: float32 scalar, the number of values per channel.
  """
  if norm.fused:
    variance *= count / tf.maximum(count - 1.0, 1.0)

  def move(variable, value):
    return lambda: variable.assign_sub(
        (variable - tf.cast(value, variable.dtype)) * (1.0 - norm.momentum))
  norm.add_update(move(norm.moving_mean, mean))
  norm.add_update(move(norm.moving_variance, variance))


def product_moments(query, key):
  """Mean and mean square per group of the products x = q . k over (B, Lq, Lk).

  From the operands alone, without the [B, G, Lq, Lk] products. Per image,
  with the means q_bar, k_bar and covariances C_q, C_k of the queries and the
  keys (over their positions),

    mean = q_bar . k_bar,
    var  = <C_q, C_k>_F + q_bar^T C_k q_bar + k_bar^T C_q k_bar

  (the cross terms vanish as the centred operands sum to zero), a sum of
  non-negative terms with no cancellation; the images combine as equal parts.

  Args:
    query: float32 [B, G, Lq, d] (G groups, e.g. attention heads).
    key: float32 [B, G, Lk, d].

  Returns:
    (mean of the images' means, mean of the images' variance + mean^2), each
    float32 [G]: what a (synchronised) batch norm sums over images.
  """
  q_mean = tf.reduce_mean(query, axis=2, keepdims=True)  # [B, G, 1, d]
  k_mean = tf.reduce_mean(key, axis=2, keepdims=True)

  def covariance(x, x_mean):
    centred = x - x_mean
    return (tf.linalg.matmul(centred, centred, transpose_a=True) /
            tf.cast(tf.shape(x)[2], x.dtype))  # [B, G, d, d]

  q_cov, k_cov = covariance(query, q_mean), covariance(key, k_mean)

  def quadratic_form(vector, matrix):  # v^T M v, [B, G]
    return tf.squeeze(tf.linalg.matmul(tf.linalg.matmul(vector, matrix),
                                       vector, transpose_b=True), [2, 3])

  means = tf.reduce_sum(q_mean * k_mean, axis=[2, 3])  # [B, G]
  variances = (tf.reduce_sum(q_cov * k_cov, axis=[2, 3]) +
               quadratic_form(q_mean, k_cov) + quadratic_form(k_mean, q_cov))
  return (tf.reduce_mean(means, axis=0),
          tf.reduce_mean(variances + tf.square(means), axis=0))


def product_affine(norm, query, key, training):
  """(scale, offset) [G] of a batch norm of the products x = q . k, per group.

  For a norm over G channels of products [B, G, Lq, Lk] (e.g. attention logits
  per head) that the caller computes as (q * scale) . k + offset without
  normalising the product itself. At inference (or for a frozen norm, as
  Keras), the moving statistics' map (`inference_affine`). In training, the
  batch statistics from the operands (`product_moments`), all-reduced over
  the replicas for a synchronised norm; the moving statistics move as Keras
  moves them (`update_moving_statistics`).

  Args:
    norm: A batch norm over G channels (built here if it is not).
    query: float32 [B, G, Lq, d].
    key: float32 [B, G, Lk, d].
    training: A Python bool or None (a tensor is the caller's to handle).

  Returns:
    float32 (scale, offset), each [G].
  """
  groups = query.shape[1]
  if is_inference(training) or not norm.trainable:
    return inference_affine(norm, [1, groups, 1, 1])
  build_by_call(norm, [1, groups, 1, 1])
  mean, mean_square = product_moments(query, key)
  images = tf.cast(tf.shape(query)[0], tf.float32)
  if norm.synchronized:
    context = tf.distribute.get_replica_context()
    mean, mean_square, images = (
        context.all_reduce(tf.distribute.ReduceOp.SUM, x * images)
        for x in (mean, mean_square, tf.ones([])))
    mean, mean_square = mean / images, mean_square / images
  variance = tf.maximum(mean_square - tf.square(mean), 0.0)
  count = images * tf.cast(tf.shape(query)[2] * tf.shape(key)[2], tf.float32)
  update_moving_statistics(norm, mean, variance, count)
  return batch_affine(norm, mean, variance)


def inference_affine(norm, input_shape):
  """(scale, offset) of a batch norm at inference, over its normalised axis.

  BN(x) = (x - mean) * gamma / sqrt(var + eps) + beta = x * scale + offset,
  so the norm folds into an adjacent linear map. A norm not built yet is built
  by a call on zeros of `input_shape`, under its own name.

  Returns:
    float32 (scale, offset), each [channels] of the norm's axis.
  """
  build_by_call(norm, input_shape)
  return batch_affine(norm, norm.moving_mean, norm.moving_variance)
