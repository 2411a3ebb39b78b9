"""Tests of the multiply-add counter against hand counts."""
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.modeling import flop_count


class _Toy(tf_keras.Model):
  """Conv 3x3 (3 -> 4), depthwise 3x3, Dense 4 -> 6, einsum with 7 kernels."""

  def __init__(self):
    super().__init__()
    self.conv = tf_keras.layers.Conv2D(4, 3, padding='same')
    self.depthwise = tf_keras.layers.DepthwiseConv2D(3, padding='same')
    self.dense = tf_keras.layers.Dense(6)
    self.kernels = tf.random.normal([1, 7, 4])

  def call(self, images, training=None):
    x = self.depthwise(self.conv(images))
    return self.dense(x), tf.einsum('bhwc,bnc->bhwn', x, self.kernels)


def test_counts_match_hand_computation():
  total, by_type = flop_count.count_multiply_adds(_Toy(), 5, 5)
  pixels = 5 * 5
  assert by_type['Conv2D'] == pixels * 4 * 3 * 3 * 3
  assert by_type['DepthwiseConv2dNative'] == pixels * 4 * 3 * 3
  assert by_type['MatMul'] == pixels * 4 * 6
  assert by_type['Einsum'] == pixels * 4 * 7
  assert total == pixels * (108 + 36 + 24 + 28)


def test_dynamic_shapes_are_rejected():
  function = tf.function(lambda x: tf.einsum('ij,jk->ik', x, x))
  concrete = function.get_concrete_function(tf.TensorSpec([None, None]))
  with pytest.raises(ValueError, match='static shape'):
    flop_count.multiply_adds_of_function(concrete)
