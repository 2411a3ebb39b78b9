"""Tests of position-sensitive axial attention against a NumPy re-implementation."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import axial_attention

EPSILON = 1e-3  # The norms' epsilon (normalization.get_norm_layer default).


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


def _randomize_norms(layer, rng):
  """Gives every batch norm random affine parameters and moving statistics."""
  for norm in [layer._qkv_norm, *layer._similarity_norms, *layer._output_norms]:
    gamma, beta, mean, variance = norm.get_weights()
    norm.set_weights([rng.uniform(0.5, 1.5, gamma.shape),
                      rng.normal(0, 0.5, beta.shape),
                      rng.normal(0, 0.5, mean.shape),
                      rng.uniform(0.5, 2.0, variance.shape)])


def _np_norm(norm, x, axis):
  gamma, beta, mean, variance = norm.get_weights()
  shape = [1] * x.ndim
  shape[axis] = -1
  gamma, beta, mean, variance = (
      w.reshape(shape) for w in (gamma, beta, mean, variance))
  return gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


ALL_TERMS = dict(use_content_similarity=True, use_query_rpe_similarity=True,
                 use_key_rpe_similarity=True, retrieve_value_content=True,
                 retrieve_value_rpe=True)


def _reference_width_attention(layer, x, num_heads, key_depth, value_depth,
                               max_span, terms):
  """Eq. (4) of Axial-DeepLab along the width, one (row, head, o) at a time."""
  weights = {w.name.split('/')[-1].split(':')[0]: w.numpy()
             for w in layer.trainable_weights}
  qkv = _np_norm(layer._qkv_norm, x @ weights['qkv_kernel'], -1)
  q, k, v = np.split(qkv, [key_depth, 2 * key_depth], axis=-1)
  dk, dv = key_depth // num_heads, value_depth // num_heads
  # The layer holds one norm per term it uses, in this order.
  similarity_norms = iter(layer._similarity_norms)
  sim_c, sim_q, sim_k = (
      next(similarity_norms) if terms[name] else None
      for name in ('use_content_similarity', 'use_query_rpe_similarity',
                   'use_key_rpe_similarity'))
  output_norms = iter(layer._output_norms)
  out_c, out_r = (next(output_norms) if terms[name] else None
                  for name in ('retrieve_value_content', 'retrieve_value_rpe'))

  def head_norm(norm, value, head):
    gamma, beta, mean, variance = (w[head] for w in norm.get_weights())
    return gamma * (value - mean) / np.sqrt(variance + EPSILON) + beta

  batch, height, width, _ = x.shape
  content = np.zeros([batch, height, width, value_depth])
  positional = np.zeros([batch, height, width, value_depth])
  for b in range(batch):
    for row in range(height):
      for head in range(num_heads):
        qh = q[b, row, :, head * dk:(head + 1) * dk]
        kh = k[b, row, :, head * dk:(head + 1) * dk]
        vh = v[b, row, :, head * dv:(head + 1) * dv]
        for o in range(width):
          index = [min(max(p - o, 1 - max_span), max_span - 1) + max_span - 1
                   for p in range(width)]
          logits = np.zeros(width)
          for p in range(width):
            if sim_c:
              logits[p] += head_norm(sim_c, qh[o] @ kh[p], head)
            if sim_q:
              logits[p] += head_norm(
                  sim_q, qh[o] @ weights['query_rpe'][index[p]], head)
            if sim_k:
              logits[p] += head_norm(
                  sim_k, kh[p] @ weights['key_rpe'][index[p]], head)
          attention = _softmax(logits)
          channels = slice(head * dv, (head + 1) * dv)
          content[b, row, o, channels] = attention @ vh
          if out_r:
            positional[b, row, o, channels] = (
                attention @ weights['value_rpe'][index])
  output = 0.0
  if out_c:
    output += _np_norm(out_c, content, -1)
  if out_r:
    output += _np_norm(out_r, positional, -1)
  return output


def _check_against_reference(axis, max_span, terms):
  rng = np.random.default_rng(0)
  num_heads, key_depth, value_depth = 2, 4, 6
  layer = axial_attention.AxialAttention(
      axis, key_depth, value_depth, num_heads=num_heads, max_span=max_span,
      **terms)
  x = rng.normal(size=[2, 3, 5, 7]).astype(np.float32)
  layer(x)
  _randomize_norms(layer, rng)
  got = layer(x, training=False).numpy()
  if axis == axial_attention.WIDTH:
    want = _reference_width_attention(layer, x, num_heads, key_depth,
                                      value_depth, max_span, terms)
  else:
    want = _reference_width_attention(
        layer, x.transpose(0, 2, 1, 3), num_heads, key_depth, value_depth,
        max_span, terms).transpose(0, 2, 1, 3)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('axis', [axial_attention.WIDTH, axial_attention.HEIGHT])
@pytest.mark.parametrize('max_span', [255, 2])
def test_matches_numpy_reference(axis, max_span):
  _check_against_reference(axis, max_span, ALL_TERMS)


@pytest.mark.parametrize('switched_off', [
    ('use_query_rpe_similarity', 'use_key_rpe_similarity',
     'retrieve_value_rpe'),  # Plain content attention.
    ('use_content_similarity',),
    ('retrieve_value_content',),
])
def test_switches_match_numpy_reference(switched_off):
  terms = {**ALL_TERMS, **{name: False for name in switched_off}}
  _check_against_reference(axial_attention.WIDTH, 3, terms)


def test_relative_distance_indices_by_hand():
  # Entry (o, p) = clip(p - o, -(span - 1), span - 1) + span - 1.
  np.testing.assert_array_equal(
      axial_attention.relative_distance_indices(3, max_span=255).numpy(),
      [[254, 255, 256], [253, 254, 255], [252, 253, 254]])
  # With span 2 the table has 3 entries; distances beyond +-1 share the ends.
  np.testing.assert_array_equal(
      axial_attention.relative_distance_indices(4, max_span=2).numpy(),
      [[1, 2, 2, 2], [0, 1, 2, 2], [0, 0, 1, 2], [0, 0, 0, 1]])


def test_parameters_do_not_depend_on_input_size():
  layer = axial_attention.AxialAttention(axial_attention.WIDTH, 16, 32)
  layer(tf.zeros([1, 2, 3, 8]))
  count = sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
  # 8 heads. qkv kernel 8 x (16 + 16 + 32); relative-encoding tables of
  # 2 * 255 - 1 rows of 2 (query), 2 (key), 4 (value) channels; gamma and beta
  # of the qkv norm (64), of 3 similarity norms (8 heads) and 2 output norms (32).
  assert count == 8 * 64 + 509 * (2 + 2 + 4) + 2 * (64 + 3 * 8 + 2 * 32)
  for size in [(5, 7), (9, 300)]:
    out = layer(tf.random.normal([1, *size, 8]), training=False)
    assert out.shape == (1, *size, 32)
    assert np.all(np.isfinite(out.numpy()))
  assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == count


def test_runs_at_sizes_other_than_the_traced_one():
  layer = axial_attention.AxialAttention(axial_attention.HEIGHT, 8, 16,
                                         num_heads=2)
  layer(tf.zeros([1, 9, 9, 4]))
  run = tf.function(lambda x: layer(x, training=False),
                    input_signature=[tf.TensorSpec([None, None, None, 4])])
  for size in [(4, 6), (17, 3), (300, 2)]:
    x = tf.random.normal([2, *size, 4])
    np.testing.assert_allclose(run(x), layer(x, training=False),
                               rtol=1e-5, atol=1e-5)


def test_xla_matches_eager():
  layer = axial_attention.AxialAttention(axial_attention.WIDTH, 8, 16,
                                         num_heads=2)
  x = tf.random.normal([2, 5, 7, 4])
  eager = layer(x, training=True)
  compiled = tf.function(lambda t: layer(t, training=True), jit_compile=True)
  np.testing.assert_allclose(compiled(x), eager, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_keeps_logits_in_float32():
  tf.random.set_seed(0)  # Weights and input: bfloat16 rounding is checked on fixed ones.
  x = tf.random.normal([2, 5, 7, 4])
  reference = axial_attention.AxialAttention(axial_attention.WIDTH, 8, 16,
                                             num_heads=2)
  want = reference(x, training=False)
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    layer = axial_attention.AxialAttention(axial_attention.WIDTH, 8, 16,
                                           num_heads=2)
    layer(x)
    layer.set_weights(reference.get_weights())
    got = layer(x, training=False)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  assert got.dtype == tf.bfloat16
  assert all(norm.compute_dtype == 'float32'
             for norm in layer._similarity_norms)
  np.testing.assert_allclose(tf.cast(got, tf.float32), want, atol=0.1)


def test_every_variable_gets_a_gradient():
  layer = axial_attention.AxialAttention(axial_attention.WIDTH, 8, 16,
                                         num_heads=2, max_span=3)
  x = tf.random.normal([2, 3, 6, 4])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x, training=True) * tf.random.normal([16]))
  grads = dict(zip([v.name for v in layer.trainable_variables],
                   tape.gradient(loss, layer.trainable_variables)))
  assert all(grad is not None for grad in grads.values())
  for name, grad in grads.items():
    grad = tf.convert_to_tensor(grad)  # The tables' gradients are sparse.
    # The softmax is shift-invariant, so the betas of the similarity norms
    # (DeepLab2 keeps them; they count in its 41.34M) get exactly zero.
    if 'similarity' in name and 'beta' in name:
      np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    else:
      assert np.abs(grad.numpy()).max() > 0, name


@pytest.mark.parametrize('kwargs', [
    dict(axis='depth'),
    dict(key_depth=6),
    dict(value_depth=0),
    dict(max_span=0),
    dict(use_content_similarity=False, use_query_rpe_similarity=False,
         use_key_rpe_similarity=False),
    dict(retrieve_value_content=False, retrieve_value_rpe=False),
])
def test_bad_arguments_raise(kwargs):
  args = dict(axis=axial_attention.WIDTH, key_depth=8, value_depth=16,
              num_heads=4)
  args.update(kwargs)
  with pytest.raises(ValueError):
    axial_attention.AxialAttention(**args)
