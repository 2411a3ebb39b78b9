"""Tests of the synchronized batch norm factory."""

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import normalization
from tests.modeling import cmt_test_utils


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


def test_returns_batch_norm_with_deeplab_defaults():
  norm = normalization.get_norm_layer(name='bn', axis=2)
  assert isinstance(norm, tf_keras.layers.BatchNormalization)
  assert norm.momentum == 0.99 and norm.epsilon == 1e-3
  assert norm.axis == 2 and norm.name == 'bn'


def test_synchronized_only_with_several_replicas_unless_forced():
  assert not normalization.get_norm_layer().synchronized
  with tf.distribute.MirroredStrategy(['/cpu:0']).scope():
    assert not normalization.get_norm_layer().synchronized
  assert normalization.get_norm_layer(synchronized=True).synchronized


def test_gin_binds_momentum_epsilon_and_synchronization():
  with gin.unlock_config():
    gin.bind_parameter('get_norm_layer.momentum', 0.9)
    gin.bind_parameter('get_norm_layer.epsilon', 1e-5)
    gin.bind_parameter('get_norm_layer.synchronized', True)
  norm = normalization.get_norm_layer()
  assert norm.momentum == 0.9 and norm.epsilon == 1e-5 and norm.synchronized


def test_normalizes_with_batch_statistics_without_a_strategy():
  x = tf.random.normal([64, 3], mean=5.0, stddev=3.0)
  y = normalization.get_norm_layer()(x, training=True).numpy()
  np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-3)


_TWO_REPLICA_SCRIPT = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cmt_deeplab_tf.modeling.layers import normalization
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
with strategy.scope():
  norm = normalization.get_norm_layer()
  assert norm.synchronized
  norm.build([None, 1])
batches = [tf.constant([[1.0], [3.0]]), tf.constant([[5.0], [7.0]])]
x = strategy.experimental_distribute_values_from_function(
    lambda context: batches[context.replica_id_in_sync_group])
y = strategy.run(lambda t: norm(t, training=True), args=(x,))
print(np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)]).ravel().tolist())
"""


@pytest.mark.slow  # A subprocess with two logical CPUs: about 7 s.
def test_statistics_are_all_reduced_over_replicas():
  # Two replicas see batches {1, 3} and {5, 7}. Synchronized, both use the
  # global mean 4 and variance 5; unsynchronized, replica 0 would give -1, 1.
  got = cmt_test_utils.python_literal_of_script(_TWO_REPLICA_SCRIPT)
  want = (np.array([1.0, 3.0, 5.0, 7.0]) - 4.0) / np.sqrt(5.0 + 1e-3)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_inference_affine_equals_the_norm_at_inference():
  rng = np.random.default_rng(0)
  norm = normalization.get_norm_layer(axis=1)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  norm(x, training=False)
  for variable in (norm.moving_mean, norm.gamma, norm.beta):
    variable.assign(rng.normal(size=3).astype(np.float32))
  norm.moving_variance.assign(rng.uniform(0.1, 2.0, 3).astype(np.float32))
  scale, offset = normalization.inference_affine(norm, [1, 3, 1, 1])
  folded = x * scale.numpy()[:, None, None] + offset.numpy()[:, None, None]
  np.testing.assert_allclose(folded, norm(x, training=False), rtol=1e-5,
                             atol=1e-5)


def test_inference_affine_builds_a_fresh_norm_at_identity():
  scale, offset = normalization.inference_affine(
      normalization.get_norm_layer(epsilon=0.0), [1, 4])
  np.testing.assert_allclose(scale, 1.0)
  np.testing.assert_allclose(offset, 0.0)


@pytest.mark.parametrize('training,expected', [
    (None, True), (False, True), (True, False)])
def test_is_inference(training, expected):
  assert normalization.is_inference(training) == expected
  assert not normalization.is_inference(tf.constant(False))


def test_rank_3_view_runs_the_fused_kernel_with_the_generic_results():
  # A [B, L, C] input normalised through the [B, L, 1, C] view gives the generic
  # (rank-3) batch norm's outputs, gradients and moving mean; its moving variance
  # moves towards the unbiased batch variance (the fused kernel's), the generic
  # one's towards the biased.
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(2.0, 3.0, size=(2, 50, 4)), tf.float32)
  generic, viewed = (normalization.get_norm_layer(name='bn') for _ in range(2))
  results = []
  for norm, run in ((generic, lambda v: generic(v, training=True)),
                    (viewed, lambda v: normalization.normalize_last_axis(
                        viewed, v, training=True))):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = run(x)
      loss = tf.reduce_sum(y * tf.range(4, dtype=tf.float32))
    results.append((y, tape.gradient(loss, [x, norm.gamma]),
                    norm.moving_mean.numpy(), norm.moving_variance.numpy()))
  assert not generic.fused and viewed.fused
  (y_a, grads_a, mean_a, var_a), (y_b, grads_b, mean_b, var_b) = results
  assert y_b.shape == x.shape
  np.testing.assert_allclose(y_b, y_a, atol=1e-5)
  for a, b in zip(grads_a, grads_b):
    np.testing.assert_allclose(b, a, atol=1e-4)
  np.testing.assert_allclose(mean_b, mean_a, rtol=1e-5)
  flat = x.numpy().reshape(-1, 4)
  momentum = generic.momentum
  np.testing.assert_allclose(var_a, momentum + (1 - momentum) * flat.var(0, ddof=0),
                             rtol=1e-5)
  np.testing.assert_allclose(var_b, momentum + (1 - momentum) * flat.var(0, ddof=1),
                             rtol=1e-5)


@pytest.mark.parametrize('fused', [True, False])
def test_batch_affine_and_moving_update_equal_the_keras_call(fused):
  # With the batch's own moments, the affine map and the moving-statistics
  # update are what Keras' training call computes (fused: unbiased variance
  # for the moving average; generic: biased).
  rng = np.random.default_rng(4)
  x = tf.constant(rng.normal(1.5, 2.0, size=(2, 3, 6, 5)), tf.float32)
  keras_norm, ours = (normalization.get_norm_layer(axis=1, fused=fused)
                      for _ in range(2))
  for norm in (keras_norm, ours):
    norm(x, training=False)
  for variable in ('gamma', 'beta', 'moving_mean'):
    value = rng.normal(size=3).astype(np.float32)
    getattr(keras_norm, variable).assign(value)
    getattr(ours, variable).assign(value)
  for norm in (keras_norm, ours):
    norm.moving_variance.assign([0.5, 1.0, 2.0])
  expected = keras_norm(x, training=True).numpy()
  values = np.moveaxis(x.numpy(), 1, -1).reshape(-1, 3)
  mean, variance = values.mean(axis=0), values.var(axis=0)
  scale, offset = normalization.batch_affine(ours, tf.constant(mean),
                                             tf.constant(variance))
  got = (x.numpy() * scale.numpy()[:, None, None] +
         offset.numpy()[:, None, None])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  normalization.update_moving_statistics(
      ours, tf.constant(mean), tf.constant(variance),
      tf.constant(float(len(values))))
  np.testing.assert_allclose(ours.moving_mean, keras_norm.moving_mean, rtol=1e-6)
  np.testing.assert_allclose(ours.moving_variance, keras_norm.moving_variance,
                             rtol=1e-6)


@pytest.mark.parametrize('mean_offset', [0.0, 30.0])
def test_product_moments_equal_the_moments_of_the_logits(mean_offset):
  # Per head, over batch, queries and keys: the mean and mean square of the
  # materialised logits q . k. A large common offset of the operands makes
  # the logits' mean dominate their spread (the variance must not cancel).
  rng = np.random.default_rng(11)
  query = rng.normal(size=(3, 2, 7, 4)) + mean_offset
  key = rng.normal(size=(3, 2, 9, 4)) * rng.uniform(0.5, 2.0, 4) + 1.0
  logits = np.einsum('bhqd,bhkd->bhqk', query, key)  # float64
  mean, mean_square = normalization.product_moments(
      tf.constant(query, tf.float32), tf.constant(key, tf.float32))
  np.testing.assert_allclose(mean, logits.mean(axis=(0, 2, 3)), rtol=1e-5)
  variance = mean_square.numpy() - mean.numpy() ** 2
  np.testing.assert_allclose(variance, logits.var(axis=(0, 2, 3)), rtol=2e-3)
  per_image = logits.reshape(3, 2, -1)
  np.testing.assert_allclose(
      mean_square, (per_image.var(axis=2) + per_image.mean(axis=2) ** 2).mean(0),
      rtol=1e-5)
