"""Tests of drop path (stochastic depth)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import drop_path


def test_identity_at_inference():
  x = tf.random.normal([8, 3, 3, 2])
  layer = drop_path.DropPath(0.5)
  np.testing.assert_array_equal(layer(x, training=False), x)
  np.testing.assert_array_equal(layer(x), x)


def test_training_drops_whole_examples_at_the_rate_and_keeps_the_mean():
  tf.random.set_seed(0)
  rate, batch = 0.3, 20000
  x = tf.ones([batch, 2, 2, 3])
  y = drop_path.DropPath(rate)(x, training=True).numpy()
  per_example = y.reshape(batch, -1)
  # Every example is either all zero or all 1 / keep_prob.
  np.testing.assert_array_equal(per_example.min(axis=1),
                                per_example.max(axis=1))
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.7], rtol=1e-6)
  dropped = np.mean(per_example[:, 0] == 0)
  # Binomial std is sqrt(0.3 * 0.7 / 20000) = 0.0032; allow 5 std.
  assert abs(dropped - rate) < 0.016
  assert abs(y.mean() - 1.0) < 0.03


def test_rate_zero_is_identity_in_training():
  x = tf.random.normal([4, 5])
  np.testing.assert_array_equal(drop_path.DropPath(0.0)(x, training=True), x)


def test_runs_under_mixed_bfloat16():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layer = drop_path.DropPath(0.5)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  tf.random.set_seed(0)
  y = layer(tf.ones([16, 2]), training=True)
  assert y.dtype == tf.bfloat16
  np.testing.assert_allclose(np.unique(y.numpy().astype(np.float32)), [0, 2])


@pytest.mark.parametrize('rate', [-0.1, 1.0, 1.5])
def test_bad_rate_raises(rate):
  with pytest.raises(ValueError, match='rate'):
    drop_path.DropPath(rate)
