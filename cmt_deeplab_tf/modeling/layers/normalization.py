"""Batch normalization that is synchronized across replicas.

Every norm of the model comes from `get_norm_layer`, so one gin binding sets the
momentum and epsilon everywhere. The defaults are DeepLab2's (trainer.proto:
`batchnorm_momentum=0.99`, `batchnorm_epsilon=0.001`), which MaX-DeepLab and
CMT-DeepLab train with.
"""
import gin
import tf_keras


@gin.configurable
def get_norm_layer(name=None, momentum=0.99, epsilon=1e-3, **kwargs):
  """Returns a batch norm synchronized across replicas of a distribution strategy.

  `BatchNormalization(synchronized=True)` all-reduces the batch statistics over
  the replicas of the current `tf.distribute` strategy; without a strategy it is
  an ordinary batch norm.

  Args:
    name: The layer name.
    momentum: Momentum of the moving statistics.
    epsilon: Added to the variance before the square root.
    **kwargs: Passed to `tf_keras.layers.BatchNormalization`, e.g. `axis` or
      `gamma_initializer`.

  Returns:
    A `tf_keras.layers.BatchNormalization` layer.
  """
  return tf_keras.layers.BatchNormalization(
      momentum=momentum, epsilon=epsilon, synchronized=True, name=name,
      **kwargs)
