"""Tests of the Hungarian matching against scipy's linear_sum_assignment."""
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from cmt_deeplab_tf.losses import matching


def _random_problems(rng, batch, num_gt, num_pred, tie_levels=None):
  """Random similarities in [0, 1] and random padding of the ground truth."""
  if tie_levels:
    similarity = rng.integers(0, tie_levels, (batch, num_gt, num_pred)) / (tie_levels - 1)
  else:
    similarity = rng.random((batch, num_gt, num_pred))
  num_valid = rng.integers(0, num_gt + 1, batch)
  gt_valid = (np.arange(num_gt)[None, :] < num_valid[:, None]).astype(np.float32)
  # Shuffle so that padded slots are not always at the end.
  for b in range(batch):
    rng.shuffle(gt_valid[b])
  return similarity.astype(np.float32), gt_valid


def _check_against_scipy(similarity, gt_valid, result):
  gt_to_pred = result.gt_to_pred.numpy()
  pred_to_gt = result.pred_to_gt.numpy()
  num_pred = similarity.shape[2]
  for b in range(similarity.shape[0]):
    valid_rows = np.flatnonzero(gt_valid[b])
    rows, cols = linear_sum_assignment(similarity[b][valid_rows], maximize=True)
    expected_total = similarity[b][valid_rows][rows, cols].sum()
    matched_rows = np.flatnonzero(gt_to_pred[b] >= 0)
    # Padded slots never take a prediction.
    assert set(matched_rows) <= set(valid_rows)
    assert len(matched_rows) == min(len(valid_rows), num_pred)
    # One-to-one, and both directions agree.
    cols_ours = gt_to_pred[b][matched_rows]
    assert len(set(cols_ours)) == len(cols_ours)
    np.testing.assert_array_equal(pred_to_gt[b][cols_ours], matched_rows)
    assert (pred_to_gt[b] >= 0).sum() == len(matched_rows)
    total = similarity[b][matched_rows, cols_ours].sum()
    np.testing.assert_allclose(total, expected_total, rtol=1e-5, atol=1e-5)


SOLVERS = ['shortest_path', 'tf_models']


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('num_gt,num_pred', [(6, 10), (10, 10), (12, 7), (1, 5)])
def test_matches_scipy_on_random_padded_problems(num_gt, num_pred, solver):
  rng = np.random.default_rng(num_gt * 100 + num_pred)
  similarity, gt_valid = _random_problems(rng, 64, num_gt, num_pred)
  result = matching.hungarian_match(tf.constant(similarity), tf.constant(gt_valid),
                                    solver=solver)
  _check_against_scipy(similarity, gt_valid, result)


@pytest.mark.parametrize('solver', SOLVERS)
@pytest.mark.parametrize('num_gt,num_pred', [(8, 8), (9, 6)])
def test_matches_scipy_with_ties(num_gt, num_pred, solver):
  rng = np.random.default_rng(7)
  similarity, gt_valid = _random_problems(rng, 64, num_gt, num_pred, tie_levels=3)
  result = matching.hungarian_match(tf.constant(similarity), tf.constant(gt_valid),
                                    solver=solver)
  _check_against_scipy(similarity, gt_valid, result)


@pytest.mark.parametrize('solver', SOLVERS)
def test_zero_similarity_still_matches_every_valid_mask_and_no_padding(solver):
  similarity = np.zeros((2, 5, 4), np.float32)
  gt_valid = np.array([[1, 0, 1, 0, 1], [0, 1, 1, 1, 1]], np.float32)
  result = matching.hungarian_match(tf.constant(similarity), tf.constant(gt_valid),
                                    solver=solver)
  gt_to_pred = result.gt_to_pred.numpy()
  np.testing.assert_array_equal(gt_to_pred[0] >= 0, gt_valid[0] > 0)
  # Four valid masks for four predictions: all matched, padding unmatched.
  np.testing.assert_array_equal(gt_to_pred[1] >= 0, gt_valid[1] > 0)


def test_hand_made_problem():
  # gt0 fits pred1 best, gt1 fits pred1 slightly less but pred2 well enough.
  similarity = np.array([[[0.1, 0.9, 0.0],
                          [0.0, 0.8, 0.7],
                          [0.9, 0.9, 0.9]]], np.float32)
  gt_valid = np.array([[1, 1, 0]], np.float32)
  result = matching.hungarian_match(tf.constant(similarity), tf.constant(gt_valid))
  np.testing.assert_array_equal(result.gt_to_pred.numpy(), [[1, 2, -1]])
  np.testing.assert_array_equal(result.pred_to_gt.numpy(), [[-1, 0, 1]])


@pytest.mark.parametrize('num_gt,num_pred,tie_levels', [
    (12, 9, None), (10, 10, None), (6, 10, None), (9, 6, 3), (8, 8, 3), (40, 33, 4)])
def test_default_solver_under_xla_matches_scipy(num_gt, num_pred, tie_levels):
  # Under XLA too, both orientations: M > N is solved transposed. (An XLA-only
  # wrong answer in the transposed graph was seen while the solver was rewritten.)
  rng = np.random.default_rng(num_gt * 7 + num_pred)
  similarity, gt_valid = _random_problems(rng, 32, num_gt, num_pred, tie_levels)
  match_fn = tf.function(matching.hungarian_match, jit_compile=True)
  result = match_fn(tf.constant(similarity), tf.constant(gt_valid))
  _check_against_scipy(similarity, gt_valid, result)


@pytest.mark.parametrize('batch,num_gt,num_pred', [(1, 3, 3), (4, 20, 20), (3, 9, 6)])
@pytest.mark.parametrize('compile_solver', [False, True])
def test_solver_in_a_graph_with_and_without_its_own_xla(batch, num_gt, num_pred,
                                                        compile_solver):
  # Graph mode (a tf.function that is not XLA-compiled), as in a default CPU
  # training step; batch 1 once failed the solver's while-loop shape checks.
  rng = np.random.default_rng(batch + num_gt)
  similarity, gt_valid = _random_problems(rng, batch, num_gt, num_pred)
  match_fn = tf.function(lambda s, v: matching.hungarian_match(
      s, v, compile_solver=compile_solver))
  result = match_fn(tf.constant(similarity), tf.constant(gt_valid))
  _check_against_scipy(similarity, gt_valid, result)


def test_many_more_ground_truth_than_predictions():
  rng = np.random.default_rng(11)
  similarity, gt_valid = _random_problems(rng, 32, 40, 6)
  result = matching.hungarian_match(tf.constant(similarity), tf.constant(gt_valid))
  _check_against_scipy(similarity, gt_valid, result)


def test_pq_style_similarity_hand_computed():
  # Two pixels, one ground-truth mask on pixel 0, two predictions.
  gt_masks = np.array([[[1.0], [0.0]]], np.float32)            # [B, P, M]
  mask_probs = np.array([[[0.8, 0.2], [0.5, 0.5]]], np.float32)  # [B, P, N]
  gt_class_one_hot = np.array([[[0.0, 1.0]]], np.float32)      # class 1 of C=2
  class_probs = np.array([[[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]]], np.float32)
  class_prob, dice = matching.pq_style_similarity(
      tf.constant(class_probs), tf.constant(mask_probs), tf.constant(gt_masks),
      tf.constant(gt_class_one_hot))
  # Dice = 2 * intersection / (|gt| + |pred|).
  np.testing.assert_allclose(dice.numpy(), [[[2 * 0.8 / 2.3, 2 * 0.2 / 1.7]]], rtol=1e-4)
  np.testing.assert_allclose(class_prob.numpy(), [[[0.7, 0.25]]], rtol=1e-6)


def test_rejects_unknown_solver():
  with pytest.raises(ValueError, match='solver'):
    matching.hungarian_match(tf.zeros([1, 2, 2]), tf.ones([1, 2]), solver='greedy')


def test_rejects_unknown_sizes():
  fn = tf.function(matching.hungarian_match, autograph=False,
                   input_signature=[tf.TensorSpec([None, None, 4]),
                                    tf.TensorSpec([None, None])])
  with pytest.raises(ValueError, match='similarity'):
    fn.get_concrete_function()
