"""Tests of ConvBN, in particular DeepLab's centred padding."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import conv_bn

EPSILON = 1e-3


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


def _centre_tap_conv(kernel_size, strides):
  """A 1-channel ConvBN whose kernel copies the input pixel under its centre."""
  layer = conv_bn.ConvBN(1, kernel_size, strides=strides, use_relu=False)
  layer(tf.zeros([1, 8, 8, 1]))
  kernel = np.zeros([kernel_size, kernel_size, 1, 1], np.float32)
  kernel[kernel_size // 2, kernel_size // 2] = 1.0
  layer._conv.kernel.assign(kernel)
  return layer


@pytest.mark.parametrize('size', [(9, 13), (8, 12)])
@pytest.mark.parametrize('kernel_size', [1, 3, 5])
def test_strided_output_pixel_i_sits_on_input_pixel_stride_times_i(
    size, kernel_size):
  x = tf.random.normal([1, *size, 1])
  y = _centre_tap_conv(kernel_size, 2)(x, training=False)
  # At inference a fresh batch norm divides by sqrt(1 + epsilon).
  np.testing.assert_allclose(y * np.sqrt(1 + EPSILON), x[:, ::2, ::2],
                             rtol=1e-5, atol=1e-6)


def test_atrous_rate_dilates_the_receptive_field():
  layer = conv_bn.ConvBN(1, 3, atrous_rate=3, use_relu=False)
  x = tf.Variable(tf.zeros([1, 15, 15, 1]))
  with tf.GradientTape() as tape:
    y = layer(x, training=False)[0, 7, 7, 0]
  support = np.argwhere(tape.gradient(y, x).numpy()[0, :, :, 0] != 0)
  # A 3x3 kernel with rate 3 reads rows and columns 4, 7 and 10.
  assert sorted(set(support[:, 0])) == [4, 7, 10]
  assert sorted(set(support[:, 1])) == [4, 7, 10]


def test_relu_and_zero_gamma():
  x = tf.random.normal([2, 5, 5, 3])
  assert np.min(conv_bn.ConvBN(4, 3)(x, training=True)) >= 0.0
  zero = conv_bn.ConvBN(4, 3, use_relu=False, gamma_initializer='zeros')
  np.testing.assert_array_equal(zero(x, training=True), 0.0)


def test_stride_with_atrous_raises():
  with pytest.raises(ValueError, match='atrous_rate'):
    conv_bn.ConvBN(4, 3, strides=2, atrous_rate=2)
