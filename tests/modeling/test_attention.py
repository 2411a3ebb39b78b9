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
    logits = layer.compute_logits(query, key, training=True)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  assert logits.dtype == tf.float32
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


def test_keys_and_values_given_as_lists_equal_their_concatenation():
  """E.g. the centers attend to [pixels; centers] with one softmax."""
  query, key, value = (tf.constant(x, tf.float32) for x in _inputs(seed=7))
  layer = attention.MultiHeadAttention(num_heads=2)
  result = layer(query, key, value, training=False)
  from_lists = layer(query, [key[:, :3], key[:, 3:]],
                     [value[:, :3], value[:, 3:]], training=False)
  np.testing.assert_allclose(from_lists.output, result.output, atol=1e-5)
  np.testing.assert_allclose(from_lists.probabilities, result.probabilities,
                             atol=1e-6)
