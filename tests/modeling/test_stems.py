"""Tests of the inception stem."""
import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling.layers import stems


@pytest.fixture(autouse=True)
def default_gin_config():
  """Runs each test with no gin bindings left by other tests."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize('size, want', [((65, 97), (33, 49)),
                                        ((64, 96), (32, 48))])
def test_output_stride_two_and_channels(size, want):
  stem = stems.InceptionStem()
  y = stem(tf.random.normal([2, *size, 3]), training=True)
  assert y.shape == (2, *want, 128)
  assert stem.output_channels == 128
  assert np.min(y) >= 0.0  # Activated.


def test_parameter_count_by_hand():
  stem = stems.InceptionStem()
  stem(tf.zeros([1, 9, 9, 3]))
  # Three bias-free 3x3 convs 3->64->64->128, each with a gamma and a beta.
  want = 9 * (3 * 64 + 64 * 64 + 64 * 128) + 2 * (64 + 64 + 128)
  assert sum(int(np.prod(w.shape)) for w in stem.trainable_weights) == want


def test_receptive_field_of_three_3x3_convs():
  tf_keras.utils.set_random_seed(0)
  stem = stems.InceptionStem(width_multiplier=0.25)
  x = tf.Variable(tf.random.normal([1, 21, 21, 3]))
  with tf.GradientTape() as tape:
    y = tf.reduce_sum(stem(x, training=False)[0, 5, 5])
  rows = np.nonzero(np.abs(tape.gradient(y, x).numpy()[0]).sum(axis=(1, 2)))[0]
  # Output 5 sits on input 10; conv1 (stride 2) sees +-1 of 10, conv2 and
  # conv3 add +-1 each at stride 2: rows 10 - 5 .. 10 + 5.
  assert rows.min() == 5 and rows.max() == 15


def test_bad_width_multiplier_raises():
  with pytest.raises(ValueError, match='width_multiplier'):
    stems.InceptionStem(width_multiplier=0)
