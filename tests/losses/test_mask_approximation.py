"""Mask-approximation loss (Dice + BCE of matched reference masks) against NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.losses import mask_approximation
from cmt_deeplab_tf.losses import matching as matching_lib
from tests.losses import tiny_case

_MATCHING = matching_lib.Matching(gt_to_pred=tf.constant([[1, 3, -1]]),
                                  pred_to_gt=tf.constant([[-1, 0, -1, 1]]))
HEIGHT, WIDTH = 2, 3  # tiny_case's grid.


def _numpy_gaussian_logits(parameters):
  """[h*w, N] logits of the documented Gaussian, on the [-1, 1] grid."""
  cy, cx = np.tanh(parameters[:, 0]), np.tanh(parameters[:, 1])
  sy, sx = np.exp(np.clip(parameters[:, 2:4], -6, 3)).T
  level = np.clip(parameters[:, 4], -80, 80)
  y, x = np.meshgrid(np.linspace(-1, 1, HEIGHT), np.linspace(-1, 1, WIDTH),
                     indexing='ij')
  y, x = y.reshape(-1, 1), x.reshape(-1, 1)
  return level - 0.5 * (((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2)


def _loss(parameters, **weights):
  return mask_approximation.mask_approximation_loss(
      parameters, HEIGHT, WIDTH, tiny_case.targets(), _MATCHING, **weights)


def test_matches_numpy_formula():
  parameters = np.random.default_rng(6).normal(size=(1, 4, 5)).astype(np.float32)
  loss = _loss(tf.constant(parameters), dice_weight=0.5, bce_weight=2.0)
  probs = 1 / (1 + np.exp(-_numpy_gaussian_logits(parameters[0])))
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
  parameters = tf.Variable(
      np.random.default_rng(7).normal(size=(1, 4, 5)).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = _loss(parameters)
  grad = tape.gradient(loss, parameters).numpy()
  assert np.all(grad[:, [0, 2]] == 0)
  assert np.all(np.abs(grad[:, [1, 3]]).sum(axis=(0, 2)) > 0)


def test_rejects_negative_weight():
  with pytest.raises(ValueError, match='dice_weight'):
    _loss(tf.zeros([1, 4, 5]), dice_weight=-1.0)
