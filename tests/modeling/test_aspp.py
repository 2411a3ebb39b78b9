"""ASPP: shapes, the pooling and atrous branches against independent
computations (NumPy mean, tf.nn.atrous_conv2d), dropout only in training."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import aspp

BN_SCALE = 1.0 / np.sqrt(1.0 + 1e-3)  # A fresh batch norm at inference.
CHANNELS = 4


def _layer(**kwargs):
  layer = aspp.ASPP(CHANNELS, **kwargs)
  layer(tf.zeros([1, 9, 11, CHANNELS]))
  return layer


def _keep_only(layer, branch_index, branch):
  """Zeroes every branch kernel but `branch`'s; the projection copies it."""
  for conv in [layer.pointwise, *layer.atrous, layer.pooling]:
    if conv is not branch:
      conv._conv.kernel.assign(tf.zeros_like(conv._conv.kernel))
  projection = np.zeros([1, 1, 5 * CHANNELS, CHANNELS], np.float32)
  projection[0, 0, branch_index * CHANNELS:(branch_index + 1) * CHANNELS] = (
      np.eye(CHANNELS))
  layer.projection._conv.kernel.assign(projection)


def test_output_keeps_the_size_and_has_the_aspp_width():
  layer = aspp.ASPP(6, atrous_rates=(1, 2, 3))
  assert layer(tf.zeros([2, 5, 7, 12]), training=True).shape == (2, 5, 7, 6)
  # 1x1, three 3x3 and the pooling 1x1 on 12 channels, the 30 -> 6 projection,
  # each with a batch norm (gamma, beta trainable).
  expected = 12 * 6 + 3 * 9 * 12 * 6 + 12 * 6 + 30 * 6 + 6 * 2 * 6
  assert sum(int(np.prod(v.shape)) for v in layer.trainable_variables) == expected


def test_pooling_branch_is_the_global_mean_at_every_pixel():
  layer = _layer()
  _keep_only(layer, 4, layer.pooling)
  layer.pooling._conv.kernel.assign(np.eye(CHANNELS)[None, None].astype(np.float32))
  x = np.random.default_rng(0).uniform(size=[2, 9, 11, CHANNELS]).astype(np.float32)
  y = layer(tf.constant(x), training=False).numpy()
  expected = x.mean(axis=(1, 2), keepdims=True) * BN_SCALE**2
  np.testing.assert_allclose(y, np.broadcast_to(expected, y.shape), rtol=1e-5)


@pytest.mark.parametrize('index', [0, 1, 2])
def test_atrous_branch_is_a_dilated_convolution(index):
  layer = _layer(atrous_rates=(2, 3, 5))
  branch = layer.atrous[index]
  _keep_only(layer, 1 + index, branch)
  kernel = np.random.default_rng(1).normal(
      size=[3, 3, CHANNELS, CHANNELS]).astype(np.float32)
  branch._conv.kernel.assign(kernel)
  x = tf.random.stateless_normal([1, 9, 11, CHANNELS], seed=[1, 2])
  y = layer(x, training=False)
  rate = (2, 3, 5)[index]
  conv = tf.nn.atrous_conv2d(x, kernel, rate=rate, padding='SAME')
  expected = tf.nn.relu(BN_SCALE * tf.nn.relu(BN_SCALE * conv))
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_dropout_only_in_training():
  layer = _layer(dropout_rate=0.5)
  x = tf.random.stateless_normal([2, 9, 11, CHANNELS], seed=[3, 4])
  np.testing.assert_array_equal(layer(x, training=False),
                                layer(x, training=False))
  layer.dropout_rate = 0.0
  reference = layer(x, training=True).numpy()
  layer.dropout_rate = 0.5
  dropped = layer(x, training=True).numpy()
  kept = dropped != 0
  np.testing.assert_allclose(dropped[kept], 2.0 * reference[kept], rtol=1e-5)
  active = reference != 0
  assert 0.35 < np.mean(~kept[active]) < 0.65


@pytest.mark.parametrize('kwargs', [dict(atrous_rates=(6, 12)),
                                    dict(atrous_rates=(0, 12, 18)),
                                    dict(dropout_rate=1.0)])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(ValueError, match='ASPP'):
    aspp.ASPP(8, **kwargs)
