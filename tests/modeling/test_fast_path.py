"""The fast implementation equals the plain one, with the same variables.

Random parameters and random batch-norm statistics everywhere, in training mode
(batch statistics, moving-average updates, gradients) and in inference mode.
The separable reference prior: tests/modeling/test_reference_mask.py.
"""
import ast
import os
import pathlib
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import attention
from cmt_deeplab_tf.modeling.layers import clustering_transformer as ct
from cmt_deeplab_tf.modeling.layers import cmt_implementations
from cmt_deeplab_tf.modeling.layers import fast_path
from cmt_deeplab_tf.modeling.layers import linear_bn
from tests.modeling import cmt_test_utils

SMALL = dict(filters=8, center_channels=12, num_heads=2,
             feed_forward_channels=16)
NUM_CENTERS = 5


def _randomize(layer, seed):
  """Random values for every variable; variances and gammas kept away from 0."""
  rng = np.random.default_rng(seed)
  for variable in layer.weights:
    name = variable.name
    if name.endswith('moving_variance:0'):
      value = rng.uniform(0.3, 2.0, variable.shape)
    elif name.endswith('gamma:0'):
      value = (rng.uniform(0.5, 1.5, variable.shape) *
               rng.choice([-1, 1], variable.shape))
    elif name.endswith(('moving_mean:0', 'beta:0')):
      value = 0.3 * rng.standard_normal(variable.shape)
    else:
      value = variable.numpy() * rng.uniform(0.5, 1.5, variable.shape)
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))


def _variables(layer):
  """{checkpoint key: value} of every variable of `layer`.

  Object-based keys (attribute paths), as a checkpoint or an importer sees
  them; variable names alone are not unique in a CMT layer.
  """
  with tempfile.TemporaryDirectory() as directory:
    path = tf.train.Checkpoint(layer=layer).save(os.path.join(directory, 'c'))
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key)
            for key in reader.get_variable_to_shape_map()
            if key.startswith('layer/')}


def _copy(source, target):
  """Copies every variable; the two must have the same checkpoint keys."""
  with tempfile.TemporaryDirectory() as directory:
    path = tf.train.Checkpoint(layer=source).save(os.path.join(directory, 'c'))
    tf.train.Checkpoint(layer=target).restore(path).assert_consumed()


def _inputs(seed, height=7, width=9, channels=10):
  rng = np.random.default_rng(seed)
  pixels = np.maximum(rng.standard_normal([2, height, width, channels]), 0.0)
  centers = rng.standard_normal([2, NUM_CENTERS, SMALL['center_channels']])
  previous = rng.standard_normal([2, 4, 5, NUM_CENTERS])
  return tuple(tf.constant(x, tf.float32) for x in (pixels, centers, previous))


def _pair(switches, build_training):
  """A plain and a fused layer with the same random variables."""
  pixels, centers, previous = _inputs(0)
  layers = {}
  for implementation in cmt_implementations.NAMES:
    layers[implementation] = ct.ClusteringTransformerLayer(
        ct.LayerOptions(**SMALL, **switches),
        cmt_implementations.get(implementation), name='cmt')
    layer = layers[implementation]
    layer(pixels, tf.cast(centers, layer.compute_dtype), previous,
          training=build_training)
  _randomize(layers[cmt_implementations.PLAIN], 1)
  _copy(layers[cmt_implementations.PLAIN], layers[cmt_implementations.FUSED])
  return layers[cmt_implementations.PLAIN], layers[cmt_implementations.FUSED]


_SWITCHES = [
    {},
    ct.DUAL_PATH_SWITCHES,
    dict(pixel_update_from_assignment=False, use_center_self_attention=False,
         use_coordinate_features=False),
    dict(center_update='kmeans+attention'),
]
_KEYS = (ct.PIXELS, ct.CENTERS, ct.ASSIGNMENT_LOGITS, ct.CLUSTERING_MAP,
         ct.ATTENTION_MAP)


def _assert_outputs_close(a, b):
  assert sorted(a) == sorted(b)
  for key in _KEYS:
    if key in a:
      scale = max(1.0, np.abs(a[key].numpy()).max())
      np.testing.assert_allclose(b[key], a[key], atol=2e-5 * scale,
                                 rtol=2e-5, err_msg=key)


@pytest.mark.parametrize('switches', _SWITCHES)
def test_inference_outputs_are_equal(switches):
  plain, fused = _pair(switches, build_training=False)
  pixels, centers, previous = _inputs(2)
  _assert_outputs_close(
      plain(pixels, centers, previous, training=False, return_maps=True),
      fused(pixels, centers, previous, training=False, return_maps=True))


@pytest.mark.parametrize('switches', _SWITCHES[:2])
def test_training_outputs_gradients_and_statistics_are_equal(switches):
  plain, fused = _pair(switches, build_training=True)
  pixels, centers, previous = _inputs(3)
  results = []
  for layer in (plain, fused):
    with tf.GradientTape() as tape:
      outputs = layer(pixels, centers, previous, training=True,
                      return_maps=True)
      loss = tf.reduce_sum(outputs[ct.PIXELS] ** 2) + tf.reduce_sum(
          tf.sin(outputs[ct.CENTERS]))
    gradients = tape.gradient(loss, layer.trainable_weights)
    # Through the checkpoint keys, as the variables: a gradient per variable.
    for variable, gradient in zip(layer.trainable_weights, gradients):
      variable.assign(gradient)
    results.append((outputs, _variables(layer)))
  (plain_outputs, plain_variables), (fused_outputs, fused_variables) = results
  _assert_outputs_close(plain_outputs, fused_outputs)
  # Gradients (now in the trainable variables) and the moving statistics,
  # updated with the batch statistics, are equal.
  assert sorted(plain_variables) == sorted(fused_variables)
  for key, value in plain_variables.items():
    scale = max(1.0, np.abs(value).max())
    np.testing.assert_allclose(fused_variables[key], value, atol=1e-4 * scale,
                               rtol=1e-4, err_msg=key)


def test_variables_do_not_depend_on_the_implementation_or_build_mode():
  """Names, checkpoint keys and shapes, whether first built in training or
  at inference."""
  pixels, centers, previous = _inputs(4)
  layouts = []
  for implementation in cmt_implementations.NAMES:
    for training in (True, False):
      layer = ct.ClusteringTransformerLayer(
          ct.LayerOptions(**SMALL), cmt_implementations.get(implementation),
          name='cmt')
      layer(pixels, centers, previous, training=training)
      layouts.append((
          sorted((v.name, tuple(v.shape)) for v in layer.weights),
          sorted((key, value.shape)
                 for key, value in _variables(layer).items())))
  assert all(layout == layouts[0] for layout in layouts[1:])


def test_unknown_implementation_raises():
  with pytest.raises(ValueError, match="'fast'.*'plain', 'fused'"):
    cmt_implementations.get('fast')
  with pytest.raises(ValueError, match='implementation'):  # A name, unresolved.
    ct.ClusteringTransformerLayer(ct.LayerOptions(**SMALL), 'fused')


def test_the_plain_layer_does_not_import_the_fast_path():
  """The implementation is chosen from outside (`cmt_implementations`)."""
  source = pathlib.Path(ct.__file__).read_text()
  imported = [node for node in ast.walk(ast.parse(source))
              if isinstance(node, (ast.Import, ast.ImportFrom))]
  names = [alias.name for node in imported for alias in node.names]
  assert 'fast_path' not in names and 'cmt_implementations' not in names
  assert 'fast_path.' not in source


@pytest.mark.parametrize('softmax_over', [attention.SOFTMAX_OVER_KEYS,
                                          attention.SOFTMAX_OVER_QUERIES])
@pytest.mark.parametrize('num_queries,num_keys', [(5, 7), (9, 3)])
def test_fused_attention_equals_plain_attention(softmax_over, num_queries,
                                                num_keys):
  rng = np.random.default_rng(5)
  query, key, value = (
      tf.constant(rng.standard_normal(shape), tf.float32)
      for shape in ([2, num_queries, 8], [2, num_keys, 8], [2, num_keys, 12]))
  bias = tf.constant(rng.standard_normal([2, 1, num_queries, num_keys]),
                     tf.float32)
  query_values = tf.constant(rng.standard_normal([2, num_queries, 12]),
                             tf.float32)
  layers = [cls(num_heads=2, softmax_over=softmax_over, name='attention')
            for cls in (attention.MultiHeadAttention,
                        fast_path.FusedMultiHeadAttention)]
  for layer in layers:
    layer(query, key, value, training=False)
  _randomize(layers[0], 6)
  _copy(*layers)
  for training in (False, True):
    plain, fused = (layer(query, key, value, logit_bias=bias,
                          training=training) for layer in layers)
    np.testing.assert_allclose(fused.output, plain.output, atol=1e-5)
    np.testing.assert_allclose(fused.probabilities, plain.probabilities,
                               atol=1e-6)
    (plain_weights, plain_mean), (fused_weights, fused_mean) = (
        layer.attend(query, key, bias, training=training) for layer in layers)
    np.testing.assert_allclose(fused_weights, plain_weights, atol=1e-6)
    np.testing.assert_allclose(fused_mean, plain_mean, atol=1e-5, rtol=1e-5)
    plain_back, fused_back = (
        layer.retrieve(plain_weights, query_values, training=training,
                       transpose_weights=True) for layer in layers)
    np.testing.assert_allclose(fused_back, plain_back, atol=1e-5)


@pytest.mark.parametrize('use_relu', [False, True])
def test_fused_linear_bn_equals_plain_linear_bn_of_the_concatenation(
    use_relu):
  rng = np.random.default_rng(7)
  x = tf.constant(rng.standard_normal([3, 6, 5]), tf.float32)
  extra = tf.constant(rng.standard_normal([3, 6, 2]), tf.float32)
  concatenated = tf.concat([x, extra], -1)
  plain = linear_bn.LinearBN(4, use_relu=use_relu, name='projection')
  fused = fast_path.FusedLinearBN(4, use_relu=use_relu, name='projection')
  plain(concatenated, training=True)
  fused([x, extra], training=False)  # Built first by the folded path.
  _randomize(plain, 8)
  _copy(plain, fused)
  for training in (False, True):
    expected = plain(concatenated, training=training)
    np.testing.assert_allclose(fused([x, extra], training=training), expected,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(fused(concatenated, training=training),
                               expected, atol=1e-5, rtol=1e-5)


def test_mixed_bfloat16_fused_equals_plain_within_bfloat16_precision():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    plain, fused = _pair({}, build_training=False)
    pixels, centers, previous = _inputs(9)
    centers = tf.cast(centers, tf.bfloat16)
    a = plain(pixels, centers, previous, training=False)
    b = fused(pixels, centers, previous, training=False)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  for key in (ct.PIXELS, ct.CENTERS):
    assert a[key].dtype == b[key].dtype == tf.bfloat16
    a_value, b_value = (tf.cast(x[key], tf.float32).numpy() for x in (a, b))
    scale = np.abs(a_value).max()
    assert np.abs(a_value - b_value).max() < 0.1 * scale


_TWO_REPLICA_SCRIPT = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from cmt_deeplab_tf.modeling.layers import attention
from cmt_deeplab_tf.modeling.layers import fast_path
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
rng = np.random.default_rng(0)
data = [[tf.constant(rng.normal(size=shape) + replica, tf.float32)
         for shape in ([1, 5, 8], [1, 7, 8], [1, 7, 6])] for replica in (0, 1)]
with strategy.scope():
  layers = [cls(num_heads=2, name='attention') for cls in
            (attention.MultiHeadAttention, fast_path.FusedMultiHeadAttention)]
  for layer in layers:
    layer(*data[0], training=False)
  for plain, fused in zip(layers[0].weights, layers[1].weights):
    fused.assign(plain)
inputs = strategy.experimental_distribute_values_from_function(
    lambda context: data[context.replica_id_in_sync_group])
outputs = [strategy.run(lambda x, l=layer: l(*x, training=True).output,
                        args=(inputs,)) for layer in layers]
result = {'synchronized': [l._logit_norm.synchronized for l in layers]}
for name, output in zip(('plain', 'fused'), outputs):
  result[name] = np.concatenate(
      [t.numpy() for t in strategy.experimental_local_results(output)]).tolist()
for name, layer in zip(('plain', 'fused'), layers):
  result[name + '_moving'] = [layer._logit_norm.moving_mean.numpy().tolist(),
                              layer._logit_norm.moving_variance.numpy().tolist()]
print(result)
"""


@pytest.mark.slow  # A subprocess with two logical CPUs: about 10 s.
def test_fused_training_statistics_are_all_reduced_over_replicas():
  # Two replicas with different inputs: the fused attention's logit norm uses
  # the global batch statistics (as Keras' synchronised norm does) and moves
  # its moving statistics as Keras does.
  got = cmt_test_utils.python_literal_of_script(_TWO_REPLICA_SCRIPT)
  assert got['synchronized'] == [True, True]
  np.testing.assert_allclose(got['fused'], got['plain'], atol=1e-5)
  for fused, plain in zip(got['fused_moving'], got['plain_moving']):
    np.testing.assert_allclose(fused, plain, rtol=1e-5)
