"""Drop path (stochastic depth) of residual branches.

Reference: G. Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016.
"""
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling import random_draws
from cmt_deeplab_tf.modeling.layers import recompute


class DropPath(tf_keras.layers.Layer):
  """Drops a residual branch per example with probability `rate` in training.

  Kept branches are scaled by 1 / (1 - rate), so the expectation is unchanged;
  at inference the layer is the identity. The masks are `random_draws`: seeded
  from the run's seed and step inside the trainer.
  """

  def __init__(self, rate, name=None):
    """Initializes the layer.

    Args:
      rate: Probability in [0, 1) of dropping the branch of an example.
      name: The layer name.

    Raises:
      ValueError: If `rate` is not in [0, 1).
    """
    if not 0.0 <= rate < 1.0:
      raise ValueError(f'DropPath rate must be in [0, 1), got rate={rate}.')
    super().__init__(name=name)
    self.rate = rate

  def call(self, inputs, training=None):
    """Applies drop path.

    Args:
      inputs: A [batch, ...] tensor, the residual branch.
      training: Whether to drop (training) or pass through (inference).

    Returns:
      A tensor like `inputs`, each example either zeroed or scaled.
    """
    if not training or self.rate == 0.0:
      return inputs
    keep_prob = 1.0 - self.rate
    mask_shape = tf.concat(
        [tf.shape(inputs)[:1], tf.ones([tf.rank(inputs) - 1], tf.int32)], 0)
    # A recomputed block gets the mask of its forward pass back (see `recompute`).
    keep = recompute.replayable(lambda: tf.floor(
        keep_prob + random_draws.uniform(mask_shape)))
    return inputs * tf.cast(keep / keep_prob, inputs.dtype)

  def get_config(self):
    return {**super().get_config(), 'rate': self.rate}
