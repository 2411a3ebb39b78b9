"""Smoothed soft Dice loss against hand-computed values."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.losses import dice


def test_hand_computed_and_ignores_invalid_pixels():
  pred = np.array([[[0.5, 1.0], [0.5, 0.0], [1.0, 1.0]]], np.float32)  # [B, P, K]
  gt = np.array([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]], np.float32)
  valid = np.array([[1.0, 1.0, 0.0]], np.float32)  # Pixel 2 is void.
  loss = dice.soft_dice_loss(tf.constant(pred), tf.constant(gt), tf.constant(valid))
  # Mask 0: 1 - (2 * 0.5 + 1) / (1.0 + 1 + 1); mask 1: 1 - (2 + 1) / (1 + 1 + 1).
  np.testing.assert_allclose(loss.numpy(), [[1 - 2 / 3, 0.0]], atol=1e-6)
