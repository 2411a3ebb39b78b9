"""Tests of the bottleneck and axial residual blocks."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import blocks


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


def _trainable_count(layer):
  return sum(int(np.prod(w.shape)) for w in layer.trainable_weights)


def _set_zero_gammas_to_one(layer):
  for weight in layer.trainable_weights:
    if 'gamma' in weight.name and not np.any(weight.numpy()):
      weight.assign(tf.ones_like(weight))


@pytest.mark.parametrize('make_block', [
    lambda: blocks.BottleneckBlock(4),
    lambda: blocks.AxialBlock(8),
])
def test_block_starts_as_identity_on_activated_inputs(make_block):
  # The last norm of the residual branch starts with gamma = 0.
  block = make_block()
  channels = 16 if isinstance(block, blocks.BottleneckBlock) else 32
  x = tf.nn.relu(tf.random.normal([2, 5, 7, channels]))
  np.testing.assert_allclose(block(x, training=True), x, atol=1e-6)


@pytest.mark.parametrize('make_block', [
    lambda: blocks.BottleneckBlock(4, strides=2),
    lambda: blocks.AxialBlock(8, strides=2),
])
def test_strided_blocks_on_odd_sizes(make_block):
  y = make_block()(tf.random.normal([2, 65, 97, 12]), training=True)
  assert y.shape[1:3] == (33, 49)
  assert np.min(y) >= 0.0


def test_bottleneck_parameter_count_by_hand():
  block = blocks.BottleneckBlock(16, strides=2)
  block(tf.zeros([1, 9, 9, 32]))
  want = (32 * 16 + 9 * 16 * 16 + 16 * 64 +   # 1x1, 3x3, 1x1 kernels
          32 * 64 +                           # projection shortcut
          2 * (16 + 16 + 64 + 64))            # gammas and betas
  assert _trainable_count(block) == want


def test_axial_block_parameter_count_by_hand():
  f = 16
  block = blocks.AxialBlock(f)
  block(tf.zeros([1, 5, 6, 4 * f]))
  conv1 = 4 * f * 2 * f + 2 * 2 * f
  # Per axis: qkv kernel 2f x (f + f + 2f) and its norm; 8 heads; tables of 509
  # rows of f/8, f/8, 2f/8 channels; 3 similarity norms (8 heads) and 2 output
  # norms (2f channels).
  axis = (2 * f * 4 * f + 2 * 4 * f + 509 * (4 * f // 8) + 3 * 2 * 8 +
          2 * 2 * 2 * f)
  conv3 = 2 * f * 4 * f + 2 * 4 * f
  assert _trainable_count(block) == conv1 + 2 * axis + conv3


def test_atrous_rate_widens_the_receptive_field():
  tf_keras.utils.set_random_seed(0)
  block = blocks.BottleneckBlock(4, atrous_rate=2)
  x = tf.Variable(tf.random.normal([1, 11, 11, 16]))
  block(x)
  _set_zero_gammas_to_one(block)
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(block(x, training=False)[0, 5, 5])
  rows = np.nonzero(np.abs(tape.gradient(y, x).numpy()[0]).sum(axis=(1, 2)))[0]
  np.testing.assert_array_equal(rows, [3, 5, 7])


def test_axial_block_sees_the_whole_image():
  # Height then width attention: output (r, c) attends to row r, whose every
  # pixel attended to its whole column, so every input pixel contributes.
  tf_keras.utils.set_random_seed(0)
  block = blocks.AxialBlock(8)
  x = tf.Variable(tf.random.normal([1, 6, 7, 32]))
  block(x)
  _set_zero_gammas_to_one(block)
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(block(x, training=False)[0, 2, 3])
  grad = np.abs(tape.gradient(y, x).numpy()[0]).sum(axis=-1)
  assert np.all(grad > 0)


def test_drop_path_drops_the_residual_branch():
  tf_keras.utils.set_random_seed(0)
  block = blocks.BottleneckBlock(4, drop_path_rate=0.5)
  x = tf.nn.relu(tf.random.normal([64, 3, 3, 16]))
  block(x)
  _set_zero_gammas_to_one(block)
  y = block(x, training=True).numpy()
  unchanged = np.all(np.isclose(y, x.numpy()), axis=(1, 2, 3))
  # About half of the examples keep only their shortcut: relu(x) = x.
  assert 16 < unchanged.sum() < 48
