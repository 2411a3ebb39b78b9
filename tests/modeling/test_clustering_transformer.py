"""Tests of the CMT layer: shapes, every switch, and the MaX dual-path limit."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.decoders import transformer_decoder
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import cmt_implementations
from tests.modeling import cmt_test_utils

BN_SCALE = 1.0 / np.sqrt(1.0 + 1e-3)  # A fresh BN at inference, before gamma.
SMALL = dict(filters=8, center_channels=12, num_heads=2,
             feed_forward_channels=16)
NUM_CENTERS = 5


def _inputs(height=7, width=9, channels=10, seed=0, activated=True):
  """Pixels (ReLU-activated, or the unactivated residual stream) and centers."""
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal([2, height, width, channels])
  if activated:
    pixels = np.maximum(pixels, 0.0)
  centers = rng.standard_normal([2, NUM_CENTERS, SMALL['center_channels']])
  return tf.constant(pixels, tf.float32), tf.constant(centers, tf.float32)


def _layer(implementation=cmt_implementations.PLAIN, **switches):
  """A built layer whose residual branches are active (gamma = 1)."""
  tf_keras.utils.set_random_seed(0)
  layer = ct.ClusteringTransformerLayer(
      ct.LayerOptions(**{**SMALL, **switches}),
      cmt_implementations.get(implementation), name='cmt')
  pixels, centers = _inputs()
  layer(pixels, centers)
  cmt_test_utils.activate_residual_branches(layer)
  return layer


def _copy_shared_weights(source, target):
  """Copies every variable of `source` that `target` also has (by name)."""
  values = {v.name: v for v in source.weights}
  copied = 0
  for variable in target.weights:
    if variable.name in values and variable.shape == values[variable.name].shape:
      variable.assign(values[variable.name])
      copied += 1
  return copied


def test_output_shapes_with_a_coarser_previous_assignment():
  layer = _layer()
  pixels, centers = _inputs(height=13, width=17)
  previous = tf.random.normal([2, 4, 5, NUM_CENTERS])
  outputs = layer(pixels, centers, previous, training=True, return_maps=True)
  assert outputs[ct.PIXELS].shape == pixels.shape
  assert outputs[ct.CENTERS].shape == centers.shape
  for key in (ct.ASSIGNMENT_LOGITS, ct.CLUSTERING_MAP, ct.ATTENTION_MAP):
    assert outputs[key].shape == (2, 13, 17, NUM_CENTERS)
  assert outputs[ct.REFERENCE_PARAMETERS].shape == (2, NUM_CENTERS, 5)
  np.testing.assert_allclose(tf.reduce_sum(outputs[ct.CLUSTERING_MAP], -1),
                             1.0, rtol=1e-5)


@pytest.mark.parametrize('switch,value', [
    ('center_update', ct.ATTENTION),    # No clustering update.
    ('center_update', ct.CLUSTERING),   # No cross-attention update.
    ('center_update', 'kmeans+attention'),  # kMaX's hard clustering.
    ('use_center_self_attention', False),
    ('use_assignment_residual', False),
    ('update_pixels', False),
    ('pixel_update_from_assignment', False),
    ('reference_mask', None),
    ('use_coordinate_features', False),
    ('feed_forward_channels', 0),
])
def test_each_switch_changes_the_computation(switch, value):
  """Same weights where shared, one switch flipped: outputs must differ."""
  default = _layer()
  flipped = _layer(**{switch: value})
  assert _copy_shared_weights(default, flipped) > 0
  pixels, centers = _inputs(seed=1)
  previous = tf.random.stateless_normal([2, 4, 5, NUM_CENTERS], [1, 2])
  a = default(pixels, centers, previous, training=False)
  b = flipped(pixels, centers, previous, training=False)
  difference = max(
      np.abs(a[ct.CENTERS] - b[ct.CENTERS]).max(),
      np.abs(a[ct.PIXELS] - b[ct.PIXELS]).max())
  assert difference > 1e-4


def test_without_location_switches_the_layer_is_pixel_permutation_equivariant():
  """Coordinates and reference masks are what make clustering location-aware."""
  pixels, centers = _inputs(seed=2)
  permutation = np.random.default_rng(0).permutation(7 * 9)

  def permute(x):
    flat = tf.reshape(x, [2, 7 * 9, -1])
    return tf.reshape(tf.gather(flat, permutation, axis=1), x.shape)

  def run(layer):
    return (layer(pixels, centers, training=False),
            layer(permute(pixels), centers, training=False))

  plain, shuffled = run(_layer(reference_mask=None,
                               use_coordinate_features=False))
  np.testing.assert_allclose(shuffled[ct.CENTERS], plain[ct.CENTERS],
                             atol=1e-4)
  np.testing.assert_allclose(shuffled[ct.PIXELS], permute(plain[ct.PIXELS]),
                             atol=1e-4)
  for location_aware in (_layer(reference_mask=None),
                         _layer(use_coordinate_features=False)):
    plain, shuffled = run(location_aware)
    assert np.abs(shuffled[ct.CENTERS] - plain[ct.CENTERS]).max() > 1e-3


@pytest.mark.parametrize('switches', [{}, ct.DUAL_PATH_SWITCHES])
def test_xla_matches_eager(switches):
  layer = _layer(**switches)
  pixels, centers = _inputs(seed=4)
  previous = tf.random.stateless_normal([2, 4, 5, NUM_CENTERS], [5, 6])
  compiled = tf.function(
      lambda p, c, a: layer(p, c, a, training=False), jit_compile=True)
  eager = layer(pixels, centers, previous, training=False)
  xla = compiled(pixels, centers, previous)
  for key in (ct.PIXELS, ct.CENTERS):
    np.testing.assert_allclose(xla[key], eager[key], atol=1e-4, rtol=1e-4)


def test_update_pixels_off_passes_pixels_through():
  layer = _layer(update_pixels=False)
  pixels, centers = _inputs()
  np.testing.assert_array_equal(layer(pixels, centers)[ct.PIXELS], pixels)


def test_assignment_residual_reads_the_previous_assignment():
  pixels, centers = _inputs()
  previous = tf.random.stateless_normal([2, 7, 9, NUM_CENTERS], [3, 4])
  for use_residual in (True, False):
    layer = _layer(use_assignment_residual=use_residual)
    with_previous = layer(pixels, centers, previous)[ct.CENTERS]
    without = layer(pixels, centers, None)[ct.CENTERS]
    changed = np.abs(with_previous - without).max() > 1e-4
    assert changed == use_residual


def test_cross_attention_alone_normalises_over_pixels():
  layer = _layer(use_center_self_attention=False)
  pixels, centers = _inputs()
  maps = layer(pixels, centers, return_maps=True)
  np.testing.assert_allclose(tf.reduce_sum(maps[ct.ATTENTION_MAP], [1, 2]),
                             1.0, rtol=1e-5)


@pytest.mark.parametrize('kwargs', [
    dict(center_update='sinkhorn'),
    dict(center_update='attention+attention'),
    dict(center_update=''),
    dict(reference_mask='box'),
    dict(filters=10, num_heads=4),
])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError):
    ct.LayerOptions(**kwargs)


def _norm(norm, x, axis=-1):
  """NumPy inference batch norm with the layer's moving statistics."""
  shape = [1] * x.ndim
  shape[axis] = -1
  def get(v):
    return v.numpy().reshape(shape)
  return ((x - get(norm.moving_mean)) / np.sqrt(get(norm.moving_variance) +
                                                 norm.epsilon) *
          get(norm.gamma) + get(norm.beta))


def _linear_bn(projection, x, relu=False):
  y = _norm(projection._norm, x @ projection._dense.kernel.numpy())
  return np.maximum(y, 0.0) if relu else y


def _project(layer, pixels, centers):
  """NumPy queries, keys and values of the layer (those it has), by projection name."""
  pixel_hidden = _linear_bn(layer._pixel_in, pixels, relu=True)
  center_hidden = _linear_bn(layer._center_in, centers, relu=True)
  return {name: _linear_bn(getattr(layer, '_' + name),
                           center_hidden if name.startswith('center') else pixel_hidden)
          for name in ('center_query', 'center_key', 'center_value', 'pixel_key',
                       'pixel_value', 'pixel_query') if getattr(layer, '_' + name, None)}


def _max_attention(attention_layer, query, key, value, num_heads):
  """DeepLab2 AttentionOperation: BN(logits) per head, softmax, BN(values), ReLU."""
  norm = attention_layer._logit_norm
  gamma, beta = norm.gamma.numpy(), norm.beta.numpy()
  batch, num_queries, depth = query.shape
  head_key, head_value = depth // num_heads, value.shape[-1] // num_heads
  output = np.zeros([batch, num_queries, value.shape[-1]])
  for h in range(num_heads):
    q = query[..., h * head_key:(h + 1) * head_key]
    k = key[..., h * head_key:(h + 1) * head_key]
    logits = np.einsum('bqd,bkd->bqk', q, k) * BN_SCALE * gamma[h] + beta[h]
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    output[..., h * head_value:(h + 1) * head_value] = np.einsum(
        'bqk,bkd->bqd', weights, value[..., h * head_value:(h + 1) * head_value])
  return np.maximum(_norm(attention_layer._value_norm, output), 0.0)


@pytest.mark.parametrize('implementation', list(cmt_implementations.NAMES))
def test_dual_path_switches_compute_max_deeplab_dual_path_layer(
    implementation):
  """NumPy re-derivation of DeepLab2's DualPathTransformerLayer (inference)."""
  layer = _layer(**ct.DUAL_PATH_SWITCHES, implementation=implementation)
  pixels, centers = _inputs(seed=3, activated=False)
  outputs = layer(pixels, centers, training=False)
  heads = SMALL['num_heads']
  p = pixels.numpy().reshape([2, 63, -1])
  m = centers.numpy()
  x = _project(layer, np.maximum(p, 0.0), m)  # It reads the activated pixels.
  # Memory -> [pixel; memory] attention with ONE softmax (MaX-DeepLab).
  retrieved = _max_attention(
      layer._center_attention, x['center_query'],
      np.concatenate([x['pixel_key'], x['center_key']], 1),
      np.concatenate([x['pixel_value'], x['center_value']], 1), heads)
  new_centers = np.maximum(
      m + _linear_bn(layer._center_attention_out, retrieved), 0.0)
  hidden = _linear_bn(layer._ffn[0], new_centers, relu=True)
  new_centers = np.maximum(new_centers + _linear_bn(layer._ffn[1], hidden),
                           0.0)
  # Pixel -> memory attention from the input memory.
  retrieved = _max_attention(layer._pixel_attention, x['pixel_query'], x['center_key'],
                             x['center_value'], heads)
  # The update joins the unactivated stream (DeepLab2: pixel_space_input +
  # pixel_space), which the next block activates.
  new_pixels = p + _linear_bn(layer._pixel_out, retrieved)
  np.testing.assert_allclose(outputs[ct.CENTERS], new_centers, atol=1e-4)
  np.testing.assert_allclose(outputs[ct.PIXELS],
                             new_pixels.reshape(pixels.shape), atol=1e-4)
  assert ct.ASSIGNMENT_LOGITS not in outputs


def test_gin_sweeps_reach_the_layers_of_a_model():
  """`--gin_param=ClusteringTransformerLayer.update_pixels=False` works."""
  gin.clear_config()
  gin.parse_config('ClusteringTransformerLayer.update_pixels = False')
  try:
    transformer = transformer_decoder.TransformerDecoder(
        transformer_decoder.DecoderOptions(
            ['decoder_stage0_block0'], num_clusters=3, center_channels=12,
            filters=8, num_heads=2, feed_forward_channels=16))
  finally:
    gin.clear_config()
  layer = transformer.transformer_layers['decoder_stage0_block0']
  pixels, centers = _inputs()
  outputs = layer(pixels, centers[:, :3])
  np.testing.assert_array_equal(outputs[ct.PIXELS], pixels)


def _randomize_norm_statistics(layer, seed=0):
  """Non-trivial moving statistics everywhere, so folded norms are exercised."""
  rng = np.random.default_rng(seed)
  for variable in layer.weights:
    if variable.name.endswith('moving_mean:0'):
      variable.assign(0.3 * rng.standard_normal(variable.shape))
    elif variable.name.endswith('moving_variance:0'):
      variable.assign(rng.uniform(0.5, 2.0, variable.shape))


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize('implementation', list(cmt_implementations.NAMES))
def test_cmt_layer_matches_a_numpy_derivation_with_centers_as_queries(
    implementation):
  """Inference of the default CMT layer, re-derived in NumPy the way the paper
  states it (centers query the pixels; the assignment is a softmax over the
  center axis; non-separable Gaussian prior), with non-trivial batch-norm
  statistics, for both implementations."""
  layer = _layer(implementation=implementation)
  _randomize_norm_statistics(layer)
  pixels, centers = _inputs(seed=5, activated=False)
  previous = tf.random.stateless_normal([2, 7, 9, NUM_CENTERS], [7, 8])
  outputs = layer(pixels, centers, previous, training=False)
  heads, height, width = SMALL['num_heads'], 7, 9
  ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width),
                       indexing='ij')
  p = np.concatenate([np.maximum(pixels.numpy(), 0.0), np.broadcast_to(
      np.stack([ys, xs], -1), (2, height, width, 2))], -1).reshape(
          [2, height * width, -1])
  m = centers.numpy()
  x = _project(layer, p, m)
  # Gaussian reference prior, [B, N, HW].
  dense = layer._reference._projection
  g = m @ dense.kernel.numpy() + dense.bias.numpy()
  cy, cx = np.tanh(g[..., 0, None]), np.tanh(g[..., 1, None])
  sy, sx = (np.exp(np.clip(g[..., i, None], -6.0, 3.0)) for i in (2, 3))
  r = g[..., 4, None] - 0.5 * (((ys.reshape(-1) - cy) / sy)**2 +
                               ((xs.reshape(-1) - cx) / sx)**2)
  bias = -np.log1p(np.exp(-r)) + np.transpose(
      previous.numpy().reshape([2, height * width, -1]), [0, 2, 1])
  # Clustering: logits [B, heads, N, HW], softmax over the N axis.
  key_depth = x['center_query'].shape[-1] // heads
  value_depth = x['pixel_value'].shape[-1] // heads
  def head(x, h, depth):
    return x[..., h * depth:(h + 1) * depth]
  logits = np.stack([np.einsum('bnd,bpd->bnp', head(x['center_query'], h, key_depth),
                               head(x['pixel_key'], h, key_depth))
                     for h in range(heads)], 1)
  logits = _norm(layer._clustering._logit_norm, logits, axis=1) + bias[:, None]
  assignment = _softmax(logits, axis=2)
  np.testing.assert_allclose(
      outputs[ct.ASSIGNMENT_LOGITS],
      np.transpose(logits.mean(1), [0, 2, 1]).reshape([2, height, width, -1]),
      atol=1e-4, rtol=1e-4)
  clustered = np.concatenate(
      [np.einsum('bnp,bpd->bnd', assignment[:, h], head(x['pixel_value'], h,
                                                         value_depth))
       for h in range(heads)], -1)
  clustered = np.maximum(_norm(layer._clustering._value_norm, clustered), 0.0)
  # Cross + self attention of the centers: one softmax over [pixels; centers].
  keys = np.concatenate([x['pixel_key'], x['center_key']], 1)
  values = np.concatenate([x['pixel_value'], x['center_value']], 1)
  attention_layer = layer._center_attention
  a = np.stack([np.einsum('bnd,bkd->bnk', head(x['center_query'], h, key_depth),
                          head(keys, h, key_depth)) for h in range(heads)], 1)
  a = _softmax(_norm(attention_layer._logit_norm, a, axis=1), -1)
  attended = [a[:, h] @ head(values, h, value_depth) for h in range(heads)]
  attended = np.maximum(
      _norm(attention_layer._value_norm, np.concatenate(attended, -1)), 0.0)
  new_centers = np.maximum(
      m + _linear_bn(layer._clustering_out, clustered) +
      _linear_bn(layer._center_attention_out, attended), 0.0)
  hidden = _linear_bn(layer._ffn[0], new_centers, relu=True)
  new_centers = np.maximum(
      new_centers + _linear_bn(layer._ffn[1], hidden), 0.0)
  # Pixels retrieve center values with the same assignment (transposed).
  retrieved = np.concatenate(
      [np.einsum('bnp,bnd->bpd', assignment[:, h], head(x['center_value'], h,
                                                         value_depth))
       for h in range(heads)], -1)
  retrieved = np.maximum(_norm(layer._pixel_attention._value_norm, retrieved),
                         0.0)
  new_pixels = (pixels.numpy().reshape([2, height * width, -1]) +
                _linear_bn(layer._pixel_out, retrieved))
  np.testing.assert_allclose(outputs[ct.CENTERS], new_centers, atol=1e-4,
                             rtol=1e-4)
  np.testing.assert_allclose(outputs[ct.PIXELS],
                             new_pixels.reshape(pixels.shape), atol=1e-4,
                             rtol=1e-4)


@pytest.mark.parametrize('implementation', list(cmt_implementations.NAMES))
def test_kmeans_rule_matches_a_numpy_derivation(implementation):
  """center_update='kmeans' alone: each pixel's value goes to the center of its
  largest head-mean assignment logit (kMaX-DeepLab's argmax), then BN and
  LinearBN, re-derived in NumPy for both implementations."""
  layer = _layer(implementation=implementation, center_update=ct.KMEANS,
                 use_center_self_attention=False, feed_forward_channels=0,
                 update_pixels=False)
  _randomize_norm_statistics(layer)
  pixels, centers = _inputs(seed=6, activated=False)
  previous = tf.random.stateless_normal([2, 7, 9, NUM_CENTERS], [9, 10])
  outputs = layer(pixels, centers, previous, training=False)
  logits = outputs[ct.ASSIGNMENT_LOGITS].numpy().reshape([2, 63, NUM_CENTERS])
  # The argmax must not hinge on rounding: every pixel's best center leads.
  top2 = np.sort(logits, -1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0]).min() > 1e-4
  p = np.concatenate([np.maximum(pixels.numpy(), 0.0), np.broadcast_to(
      np.stack(np.meshgrid(np.linspace(-1, 1, 7), np.linspace(-1, 1, 9),
                           indexing='ij'), -1), (2, 7, 9, 2))], -1)
  x = _project(layer, p.reshape([2, 63, -1]), centers.numpy())
  hard = np.eye(NUM_CENTERS)[logits.argmax(-1)]  # [B, HW, N]
  gathered = _norm(layer._kmeans_value_norm,
                   np.einsum('bpn,bpd->bnd', hard, x['pixel_value']))
  expected = np.maximum(
      centers.numpy() + _linear_bn(layer._kmeans_out, gathered), 0.0)
  np.testing.assert_allclose(outputs[ct.CENTERS], expected, atol=1e-4,
                             rtol=1e-4)
  assert not hasattr(layer, '_clustering_out') or layer._clustering_out is None
