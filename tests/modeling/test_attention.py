"""Tests of the multi-head attention primitive against a NumPy reference."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import attention

BN_EPSILON = 1e-3  # get_norm_layer default; fresh BN at inference = x / sqrt(1+eps).


def _reference(query, key, value, num_heads, axis, bias=0.0):
  """NumPy multi-head attention with fresh (inference) batch norms."""
  batch, num_queries, key_depth = query.shape
  scale = 1.0 / np.sqrt(1.0 + BN_EPSILON)
  head_key = key_depth // num_heads
  head_value = value.shape[-1] // num_heads
  outputs = np.zeros([batch, num_queries, value.shape[-1]])
  probabilities = np.zeros([batch, num_heads, num_queries, key.shape[1]])
  for b in range(batch):
    for h in range(num_heads):
      q = query[b, :, h * head_key:(h + 1) * head_key]
      k = key[b, :, h * head_key:(h + 1) * head_key]
      logits = q @ k.T * scale + bias
      logits -= logits.max(axis=axis, keepdims=True)
      p = np.exp(logits) / np.exp(logits).sum(axis=axis, keepdims=True)
      probabilities[b, h] = p
      v = value[b, :, h * head_value:(h + 1) * head_value]
      outputs[b, :, h * head_value:(h + 1) * head_value] = p @ v
  return np.maximum(outputs * scale, 0.0), probabilities


def _inputs(seed=0, batch=2, num_queries=5, num_keys=7, key_depth=8,
            value_depth=12):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal([batch, num_queries, key_depth]),
          rng.standard_normal([batch, num_keys, key_depth]),
          rng.standard_normal([batch, num_keys, value_depth]))


@pytest.mark.parametrize('softmax_over,axis', [
    (attention.SOFTMAX_OVER_KEYS, -1), (attention.SOFTMAX_OVER_QUERIES, -2)])
def test_matches_numpy_reference(softmax_over, axis):
  query, key, value = _inputs()
  layer = attention.MultiHeadAttention(num_heads=2, softmax_over=softmax_over)
  result = layer(tf.constant(query, tf.float32), tf.constant(key, tf.float32),
                 tf.constant(value, tf.float32), training=False)
  expected_output, expected_probabilities = _reference(query, key, value, 2,
                                                       axis)
  np.testing.assert_allclose(result.probabilities, expected_probabilities,
                             atol=1e-5)
  np.testing.assert_allclose(result.output, expected_output, atol=1e-4)
  np.testing.assert_allclose(
      tf.reduce_sum(result.probabilities, axis=axis), 1.0, atol=1e-5)


def test_logit_bias_is_added_before_the_softmax():
  query, key, value = _inputs(seed=1)
  bias = np.zeros([1, 1, 5, 7])
  bias[..., 3] = -1e4  # Key 3 is masked out for every query.
  layer = attention.MultiHeadAttention(num_heads=2)
  result = layer(tf.constant(query, tf.float32), tf.constant(key, tf.float32),
                 tf.constant(value, tf.float32), logit_bias=bias,
                 training=False)
  _, expected = _reference(query, key, value, 2, -1, bias=bias[0, 0])
  np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
  assert np.all(result.probabilities.numpy()[..., 3] < 1e-6)


def test_transposed_retrieval_sends_values_back_to_the_keys():
  query, key, value = _inputs(seed=2)
  layer = attention.MultiHeadAttention(num_heads=2,
                                       softmax_over=attention.SOFTMAX_OVER_QUERIES)
  result = layer(tf.constant(query, tf.float32), tf.constant(key, tf.float32),
                 tf.constant(value, tf.float32), training=False)
  query_values = np.random.default_rng(3).standard_normal([2, 5, 12])
  retrieved = layer.retrieve(result.probabilities,
                             tf.constant(query_values, tf.float32),
                             training=False, transpose_weights=True)
  p = result.probabilities.numpy()
  expected = np.zeros([2, 7, 12])
  for h in range(2):
    expected[..., h * 6:(h + 1) * 6] = np.einsum(
        'bqk,bqd->bkd', p[:, h], query_values[..., h * 6:(h + 1) * 6])
  np.testing.assert_allclose(
      retrieved, np.maximum(expected / np.sqrt(1 + BN_EPSILON), 0.0),
      atol=1e-4)


def test_mean_over_heads():
  probabilities = tf.constant(np.arange(24, dtype=np.float32).reshape(
      [1, 2, 3, 4]))
  np.testing.assert_allclose(attention.mean_over_heads(probabilities),
                             (probabilities[:, 0] + probabilities[:, 1]) / 2)


def test_logits_stay_float32_under_mixed_bfloat16():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layer = attention.MultiHeadAttention(num_heads=2)
    query, key, value = (tf.constant(x, tf.bfloat16) for x in _inputs())
    result = layer(query, key, value, training=True)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  assert result.logits.dtype == tf.float32
  assert result.probabilities.dtype == tf.float32
  assert result.output.dtype == tf.bfloat16


@pytest.mark.parametrize('kwargs', [dict(softmax_over='pixels'),
                                    dict(num_heads=0)])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    attention.MultiHeadAttention(**kwargs)


def test_heads_must_divide_the_depth():
  layer = attention.MultiHeadAttention(num_heads=3)
  query, key, value = (tf.constant(x, tf.float32) for x in _inputs())
  with pytest.raises(ValueError, match='divisible'):
    layer(query, key, value)


def test_inference_logits_equal_the_keras_norm_of_the_raw_logits():
  """The folded inference norm (scale on the queries, offset kept aside for
  the softmax) equals the Keras batch norm applied to the raw products."""
  query, key, value = (tf.constant(x, tf.float32) for x in _inputs(seed=4))
  bias = tf.constant(np.random.default_rng(5).standard_normal([2, 1, 5, 7]),
                     tf.float32)
  layer = attention.MultiHeadAttention(num_heads=2)
  layer(query, key, value, training=False)
  norm = layer._logit_norm
  rng = np.random.default_rng(6)
  norm.moving_mean.assign(rng.standard_normal(2))
  norm.moving_variance.assign(rng.uniform(0.2, 3.0, 2))
  norm.gamma.assign(rng.uniform(0.5, 2.0, 2))
  norm.beta.assign(rng.standard_normal(2))
  heads_q, heads_k = (np.transpose(x.numpy().reshape([2, -1, 2, 4]),
                                   [0, 2, 1, 3]) for x in (query, key))
  raw = np.einsum('bhqd,bhkd->bhqk', heads_q, heads_k)
  expected = norm(tf.constant(raw, tf.float32), training=False) + bias
  logits = layer.compute_logits(query, key, bias, training=False)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=1e-5)
  probabilities, mean_logits = layer.attend(query, key, bias, training=False)
  np.testing.assert_allclose(probabilities, tf.nn.softmax(expected, -1),
                             atol=1e-6)
  np.testing.assert_allclose(mean_logits, tf.reduce_mean(expected, 1),
                             atol=1e-5, rtol=1e-5)
  result = layer(query, key, value, logit_bias=bias, training=False)
  np.testing.assert_allclose(result.logits, expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(result.probabilities, probabilities, atol=1e-6)
  # In training the Keras norm normalises with the batch statistics.
  trained = layer.compute_logits(query, key, training=True)
  np.testing.assert_allclose(tf.reduce_mean(trained, [0, 2, 3]),
                             norm.beta, atol=1e-4)


def _randomize(norm, rng):
  channels = norm.moving_mean.shape[0]
  norm.moving_mean.assign(rng.standard_normal(channels))
  norm.moving_variance.assign(rng.uniform(0.2, 3.0, channels))
  norm.gamma.assign(rng.uniform(-2.0, 2.0, channels))
  norm.beta.assign(rng.standard_normal(channels))


@pytest.mark.parametrize('num_queries,num_keys', [(5, 7), (9, 3)])
def test_inference_output_equals_the_keras_value_norm_of_the_retrieval(
    num_queries, num_keys):
  """With fewer keys than queries the value norm is folded into the values
  (each row of the weights sums to one); either way the output is the Keras
  norm of the retrieved values. Keys and values given as lists (e.g. pixels
  and centers) equal their concatenation."""
  query, key, value = (tf.constant(x, tf.float32) for x in _inputs(
      seed=7, num_queries=num_queries, num_keys=num_keys))
  layer = attention.MultiHeadAttention(num_heads=2)
  layer(query, key, value, training=False)
  rng = np.random.default_rng(8)
  _randomize(layer._logit_norm, rng)
  _randomize(layer._value_norm, rng)
  result = layer(query, key, value, training=False)
  heads_v = np.transpose(value.numpy().reshape([2, num_keys, 2, 6]),
                         [0, 2, 1, 3])
  retrieved = np.einsum('bhqk,bhkd->bqhd', result.probabilities.numpy(),
                        heads_v).reshape([2, num_queries, 12])
  expected = tf.nn.relu(layer._value_norm(tf.constant(retrieved, tf.float32),
                                          training=False))
  np.testing.assert_allclose(result.output, expected, atol=1e-4, rtol=1e-4)
  split = num_keys // 2
  from_lists = layer(query, [key[:, :split], key[:, split:]],
                     [value[:, :split], value[:, split:]], training=False)
  np.testing.assert_allclose(from_lists.output, result.output, atol=1e-5)
  np.testing.assert_allclose(from_lists.logits, result.logits, atol=1e-5)


def test_clustering_as_pixels_querying_centers_equals_softmax_over_queries():
  """The CMT layer's form of clustering (pixels query the centers, softmax
  over keys) is the transpose of centers querying pixels with the softmax over
  queries, and its two retrievals swap accordingly."""
  centers, pixels, pixel_values = (tf.constant(x, tf.float32)
                                   for x in _inputs(seed=7))
  center_values = tf.constant(
      np.random.default_rng(8).standard_normal([2, 5, 12]), tf.float32)
  by_queries = attention.MultiHeadAttention(
      num_heads=2, softmax_over=attention.SOFTMAX_OVER_QUERIES)
  by_keys = attention.MultiHeadAttention(num_heads=2)
  a = by_queries(centers, pixels, pixel_values, training=False)
  b, _ = by_keys.attend(pixels, centers, training=False)
  np.testing.assert_allclose(tf.transpose(b, [0, 1, 3, 2]), a.probabilities,
                             atol=1e-6)
  np.testing.assert_allclose(
      by_keys.retrieve(b, pixel_values, training=False,
                       transpose_weights=True), a.output, atol=1e-5)
  np.testing.assert_allclose(
      by_keys.retrieve(b, center_values, training=False),
      by_queries.retrieve(a.probabilities, center_values, training=False,
                          transpose_weights=True), atol=1e-5)
