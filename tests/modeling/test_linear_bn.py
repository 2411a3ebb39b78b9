"""Tests of the projection + batch norm (the fused form: test_fast_path.py)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import fast_path
from cmt_deeplab_tf.modeling.layers import linear_bn

_CLASSES = [linear_bn.LinearBN, fast_path.FusedLinearBN]


def _randomise_statistics(layer, seed):
  """Random non-trivial moving statistics and affine parameters of the norm."""
  rng = np.random.default_rng(seed)
  norm = layer._norm
  for variable, low, high in ((norm.moving_mean, -1.0, 1.0),
                              (norm.moving_variance, 0.2, 3.0),
                              (norm.gamma, -2.0, 2.0), (norm.beta, -1.0, 1.0)):
    variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))


def _numpy_linear_bn(x, layer, use_relu):
  """relu((x W - mean) / sqrt(var + eps) * gamma + beta), the unfolded formula."""
  norm = layer._norm
  y = x @ layer._dense.kernel.numpy()
  y = ((y - norm.moving_mean.numpy()) / np.sqrt(norm.moving_variance.numpy() +
                                                norm.epsilon) *
       norm.gamma.numpy() + norm.beta.numpy())
  return np.maximum(y, 0.0) if use_relu else y


@pytest.mark.parametrize('layer_class', _CLASSES)
@pytest.mark.parametrize('use_relu', [False, True])
def test_inference_equals_the_unfolded_formula(layer_class, use_relu):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 5)).astype(np.float32)
  layer = layer_class(4, use_relu=use_relu)
  layer(x, training=True)  # Builds the layer along the Keras (training) path.
  _randomise_statistics(layer, 1)
  expected = _numpy_linear_bn(x, layer, use_relu)
  np.testing.assert_allclose(layer(x, training=False), expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_training_uses_batch_statistics():
  x = np.random.default_rng(4).normal(3.0, 2.0, size=(64, 5)).astype(np.float32)
  layer = linear_bn.LinearBN(3)
  y = layer(x, training=True).numpy()
  np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-2)


@pytest.mark.parametrize('layer_class', _CLASSES)
def test_inference_under_mixed_bfloat16(layer_class):
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layer = layer_class(4, use_relu=True)
    x = np.random.default_rng(5).normal(size=(2, 3, 6)).astype(np.float32)
    layer(x, training=True)
    _randomise_statistics(layer, 6)
    y = layer(x, training=False)
    assert y.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y, tf.float32),
                               _numpy_linear_bn(x, layer, True), rtol=0.05,
                               atol=0.05)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
