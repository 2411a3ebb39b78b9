"""PQ-style loss against a NumPy evaluation of MaX-DeepLab's formula."""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.losses import matching as matching_lib
from cmt_deeplab_tf.losses import pq_style
from tests.losses import tiny_case
from tests.losses.tiny_case import GT_CLASSES, MASK_INDEX, NUM_CLASSES


def test_matches_numpy_formula():
  rng = np.random.default_rng(0)
  num_pred = 4
  class_logits = rng.normal(size=(1, num_pred, NUM_CLASSES + 1)).astype(np.float32)
  mask_logits = rng.normal(size=(1, 2, 3, num_pred)).astype(np.float32)
  # gt 0 -> prediction 3, gt 1 -> prediction 0; predictions 1 and 2 unmatched.
  matching = matching_lib.Matching(gt_to_pred=tf.constant([[3, 0, -1]]),
                                   pred_to_gt=tf.constant([[1, -1, -1, 0]]))
  class_term, mask_term = pq_style.pq_style_loss(
      tf.constant(class_logits), tf.constant(mask_logits), tiny_case.targets(), matching,
      positive_weight=0.75)

  class_probs = tiny_case.softmax(class_logits[0])
  mask_probs = tiny_case.softmax(mask_logits[0].reshape(6, num_pred))
  valid = MASK_INDEX[0].reshape(6) >= 0
  gt = [MASK_INDEX[0].reshape(6) == m for m in range(2)]
  expected_class, expected_mask = 0.0, 0.0
  for m, n in [(0, 3), (1, 0)]:
    p = mask_probs[:, n] * valid
    dice = 2 * (p * gt[m]).sum() / (gt[m].sum() + p.sum())
    prob = class_probs[n, GT_CLASSES[0, m]]
    expected_class += 0.75 * dice * -np.log(prob)
    smooth_dice = (2 * (p * gt[m]).sum() + 1) / (gt[m].sum() + p.sum() + 1)
    expected_mask += 0.75 * prob * (1 - smooth_dice)
  for n in [1, 2]:
    expected_class += 0.25 * -np.log(class_probs[n, NUM_CLASSES])
  np.testing.assert_allclose(class_term.numpy(), [expected_class / num_pred], rtol=1e-4)
  np.testing.assert_allclose(mask_term.numpy(), [expected_mask / num_pred], rtol=1e-4)


def test_weights_are_constants():
  class_logits = tf.Variable(tf.zeros([1, 2, NUM_CLASSES + 1]))
  mask_logits = tf.Variable(tf.zeros([1, 2, 3, 2]))
  matching = matching_lib.Matching(gt_to_pred=tf.constant([[0, 1, -1]]),
                                   pred_to_gt=tf.constant([[0, 1]]))
  with tf.GradientTape(persistent=True) as tape:
    class_term, mask_term = pq_style.pq_style_loss(class_logits, mask_logits,
                                                   tiny_case.targets(), matching)
  # The class term's Dice weight is a constant: no gradient to the masks.
  assert tape.gradient(class_term, mask_logits) is None
  assert tape.gradient(mask_term, class_logits) is None
  assert np.abs(tape.gradient(mask_term, mask_logits).numpy()).sum() > 0


def test_perfect_prediction_has_lower_loss_than_random():
  num_pred = 3
  # Prediction n predicts gt n with its class and mask, prediction 2 no-object.
  perfect_class = np.full((1, num_pred, NUM_CLASSES + 1), -10.0, np.float32)
  perfect_class[0, 0, 2] = perfect_class[0, 1, 0] = perfect_class[0, 2, 3] = 10.0
  perfect_mask = np.full((1, 2, 3, num_pred), -10.0, np.float32)
  perfect_mask[0, 0, :, 0] = 10.0
  perfect_mask[0, 1, :, 1] = 10.0
  matching = matching_lib.Matching(gt_to_pred=tf.constant([[0, 1, -1]]),
                                   pred_to_gt=tf.constant([[0, 1, -1]]))

  def loss(class_logits, mask_logits):
    terms = pq_style.pq_style_loss(tf.constant(class_logits),
                                   tf.constant(mask_logits),
                                   tiny_case.targets(), matching)
    return [term.numpy()[0] for term in terms]

  perfect_class_term, perfect_mask_term = loss(perfect_class, perfect_mask)
  assert perfect_class_term < 1e-3
  # Only the Dice smoothing and the void pixel keep the mask term above zero.
  assert perfect_mask_term < 1e-3
  rng = np.random.default_rng(1)
  for _ in range(5):
    random_class_term, random_mask_term = loss(
        rng.normal(size=perfect_class.shape).astype(np.float32),
        rng.normal(size=perfect_mask.shape).astype(np.float32))
    assert random_class_term > perfect_class_term + 0.1
    assert random_mask_term > perfect_mask_term + 0.01


def test_rejects_bad_positive_weight():
  matching = matching_lib.Matching(gt_to_pred=tf.constant([[0, 1, -1]]),
                                   pred_to_gt=tf.constant([[0, 1]]))
  with pytest.raises(ValueError, match='positive_weight'):
    pq_style.pq_style_loss(tf.zeros([1, 2, 4]), tf.zeros([1, 2, 3, 2]),
                           tiny_case.targets(),
                           matching, positive_weight=1.5)
