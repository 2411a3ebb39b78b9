"""Mask-ID cross-entropy against a NumPy evaluation of its definition."""
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.losses import mask_id
from cmt_deeplab_tf.losses import matching as matching_lib
from tests.losses import tiny_case


def _loss(mask_logits, gt_to_pred, pred_to_gt):
  matching = matching_lib.Matching(gt_to_pred=tf.constant(gt_to_pred),
                                   pred_to_gt=tf.constant(pred_to_gt))
  return mask_id.mask_id_cross_entropy(tf.constant(mask_logits), tiny_case.targets(),
                                       matching).numpy()


def test_matches_numpy_cross_entropy():
  rng = np.random.default_rng(1)
  mask_logits = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  loss = _loss(mask_logits, [[2, 0, -1]], [[1, -1, 0, -1]])
  probs = tiny_case.softmax(mask_logits[0].reshape(6, 4))
  slot_of_gt = {0: 2, 1: 0}
  expected = np.mean([-np.log(probs[p, slot_of_gt[m]])
                      for p, m in enumerate(tiny_case.FLAT_MASK_INDEX) if m >= 0])
  np.testing.assert_allclose(loss, [expected], rtol=1e-5)


def test_pixels_of_unmatched_masks_are_skipped():
  rng = np.random.default_rng(2)
  mask_logits = rng.normal(size=(1, 2, 3, 1)).astype(np.float32)
  mask_logits = np.concatenate([mask_logits, mask_logits + 1.0], axis=-1)
  # gt 1 has no prediction: only the three pixels of gt 0 count.
  loss = _loss(mask_logits, [[1, -1, -1]], [[-1, 0]])
  probs = tiny_case.softmax(mask_logits[0].reshape(6, 2))
  expected = np.mean(-np.log(probs[:3, 1]))
  np.testing.assert_allclose(loss, [expected], rtol=1e-5)
