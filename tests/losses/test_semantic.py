"""Auxiliary semantic cross-entropy against NumPy."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.losses import loss_targets
from cmt_deeplab_tf.losses import semantic
from tests.losses import tiny_case


def test_matches_numpy_and_ignores_void():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 2, 3, tiny_case.NUM_CLASSES)).astype(np.float32)
  loss = semantic.semantic_cross_entropy(tf.constant(logits), tiny_case.targets())
  probs = tiny_case.softmax(logits[0].reshape(6, -1))
  labels = tiny_case.SEMANTIC[0].reshape(6)
  expected = np.mean([-np.log(probs[p, labels[p]]) for p in range(6) if labels[p] != 255])
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-5)


def test_crowd_pixels_are_ignored():
  raw = tiny_case.raw_targets()
  # Pixel (0, 0) becomes crowd: labelled class, but no mask and zero weight.
  mask_index = raw[common.MASK_INDEX].copy()
  mask_index[0, 0, 0] = -1
  raw[common.MASK_INDEX] = mask_index
  raw[common.PIXEL_WEIGHT] = (mask_index >= 0).astype(np.float32)
  targets = loss_targets.prepare_loss_targets(raw, tiny_case.NUM_CLASSES, stride=1)
  logits = np.zeros((1, 2, 3, tiny_case.NUM_CLASSES), np.float32)
  logits[0, 0, 0, 0] = 50.0  # A huge error on the crowd pixel must not count.
  loss = semantic.semantic_cross_entropy(tf.constant(logits), targets)
  np.testing.assert_allclose(loss.numpy(), [np.log(3.0)], rtol=1e-5)


def test_a_void_logit_enters_the_softmax_but_is_never_a_target():
  # kMaX's 'aspp' semantic head predicts C + 1 logits, void last (DeepLab2).
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(1, 2, 3, tiny_case.NUM_CLASSES + 1)).astype(np.float32)
  loss = semantic.semantic_cross_entropy(tf.constant(logits), tiny_case.targets())
  probs = tiny_case.softmax(logits[0].reshape(6, -1))
  labels = tiny_case.SEMANTIC[0].reshape(6)
  expected = np.mean([-np.log(probs[p, labels[p]]) for p in range(6) if labels[p] != 255])
  np.testing.assert_allclose(loss.numpy(), [expected], rtol=1e-5)
