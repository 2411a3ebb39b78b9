"""Mask-approximation loss (Dice + BCE of matched reference masks) against NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.losses import mask_approximation
from cmt_deeplab_tf.losses import matching as matching_lib
from tests.losses import tiny_case

_MATCHING = matching_lib.Matching(gt_to_pred=tf.constant([[1, 3, -1]]),
                                  pred_to_gt=tf.constant([[-1, 0, -1, 1]]))


def test_matches_numpy_formula():
  logits = np.random.default_rng(6).normal(size=(1, 2, 3, 4)).astype(np.float32)
  loss = mask_approximation.mask_approximation_loss(
      tf.constant(logits), tiny_case.targets(), _MATCHING, dice_weight=0.5,
      bce_weight=2.0)
  probs = 1 / (1 + np.exp(-logits[0].reshape(6, 4)))
  valid = tiny_case.VALID
  per_mask = []
  for m, n in [(0, 1), (1, 3)]:
    gt = (tiny_case.FLAT_MASK_INDEX == m).astype(np.float64)
    p = probs[:, n]
    dice = 1 - (2 * (p * gt)[valid].sum() + 1) / (p[valid].sum() + gt.sum() + 1)
    bce = -(gt * np.log(p) + (1 - gt) * np.log(1 - p))[valid].mean()
    per_mask.append(0.5 * dice + 2.0 * bce)
  np.testing.assert_allclose(loss.numpy(), [np.mean(per_mask)], rtol=1e-5)


def test_unmatched_clusters_get_no_gradient():
  logits = tf.Variable(tf.zeros([1, 2, 3, 4]))
  with tf.GradientTape() as tape:
    loss = mask_approximation.mask_approximation_loss(logits, tiny_case.targets(),
                                                      _MATCHING)
  grad = tape.gradient(loss, logits).numpy()
  assert np.all(grad[..., [0, 2]] == 0)
  assert np.all(np.abs(grad[..., [1, 3]]).sum(axis=(0, 1, 2)) > 0)


def test_rejects_negative_weight():
  with pytest.raises(ValueError, match='dice_weight'):
    mask_approximation.mask_approximation_loss(
        tf.zeros([1, 2, 3, 4]), tiny_case.targets(), _MATCHING, dice_weight=-1.0)
