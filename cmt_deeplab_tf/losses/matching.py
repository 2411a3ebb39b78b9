"""Bipartite matching of predicted masks to padded ground truth (MaX-DeepLab).

MaX-DeepLab (Wang et al., CVPR 2021, Sec. 3.2) matches the N predicted masks to
the ground-truth masks by maximising the PQ-style similarity

  sim(i, j) = p_j(c_i) * Dice(m_i, m_hat_j),

the predicted probability of the ground-truth class times the mask Dice. The
optimal one-to-one matching is found with the Hungarian algorithm; CMT-DeepLab
(Yu et al., CVPR 2022) keeps this matching. Two TF-native exact solvers, both
XLA-compilable (they run inside a TPU step), are available:
- 'shortest_path' (default): our batched shortest-augmenting-path solver
  (`hungarian`), 7-300x faster than 'tf_models' on CPU
  (scripts/bench_objective.py);
- 'tf_models': tf-models-official's `hungarian_matching`, which needs square
  problems, so the [M, N] problem is padded.

The 'shortest_path' solver runs XLA-compiled even inside a step that is not
(`compile_solver=True`): its loop is hundreds of sequential steps of a few small
ops, which cost ~10x more as graph-mode ops than as one XLA computation
(128 real masks: ~18 ms vs ~2 ms, scripts/bench_objective.py).
"""
from typing import NamedTuple, Tuple

import gin
import tensorflow as tf
from official.projects.detr.ops import matchers

from cmt_deeplab_tf.losses import hungarian

_SOLVERS = ('shortest_path', 'tf_models')

# Dice denominators get this epsilon (DeepLab2's `_mask_similarity`).
_DICE_EPSILON = 1e-5


class Matching(NamedTuple):
  """A one-to-one matching between M ground-truth and N predicted masks.

  Attributes:
    gt_to_pred: int32 [B, M], the prediction matched to each ground-truth mask,
      -1 for padded (or unmatched, when valid masks outnumber predictions) slots.
    pred_to_gt: int32 [B, N], the ground-truth mask matched to each prediction,
      -1 for unmatched predictions (the no-object ones).
  """
  gt_to_pred: tf.Tensor
  pred_to_gt: tf.Tensor


def mask_dice_similarity(gt_masks: tf.Tensor, mask_probs: tf.Tensor) -> tf.Tensor:
  """Dice between every ground-truth and every predicted mask.

  Dice(m, m_hat) = 2 |m . m_hat| / (|m| + |m_hat|), with the epsilon of DeepLab2.

  Args:
    gt_masks: float32 [B, P, M], binary ground-truth masks over P pixels.
    mask_probs: float32 [B, P, N], soft predicted masks (zero on ignored pixels).

  Returns:
    float32 [B, M, N].
  """
  intersection = tf.einsum('bpm,bpn->bmn', gt_masks, mask_probs)
  gt_area = tf.reduce_sum(gt_masks, axis=1)[:, :, tf.newaxis]
  pred_area = tf.reduce_sum(mask_probs, axis=1)[:, tf.newaxis, :]
  return intersection / ((gt_area + pred_area) / 2.0 + _DICE_EPSILON)


def class_similarity(gt_class_one_hot: tf.Tensor, class_probs: tf.Tensor) -> tf.Tensor:
  """Predicted probability of each ground-truth mask's class.

  Args:
    gt_class_one_hot: float32 [B, M, C], zero rows for padded slots.
    class_probs: float32 [B, N, C + 1], softmax over C classes and no-object.

  Returns:
    float32 [B, M, N], p_n(c_m).
  """
  num_classes = gt_class_one_hot.shape[-1]
  return tf.einsum('bmc,bnc->bmn', gt_class_one_hot, class_probs[..., :num_classes])


def _pad_to_square(cost: tf.Tensor, gt_valid: tf.Tensor) -> tf.Tensor:
  """Pads an [B, M, N] cost to [B, S, S], S = max(M, N), so padding never wins.

  Padded rows and invalid ground-truth rows cost 0 everywhere: such constant rows
  take whatever columns the real rows leave. If M > N, dummy columns are added
  that cost 1 for valid rows (more than any real cost, which is <= 0) and 0 for
  invalid rows, so a valid mask is only left unmatched when every prediction is
  taken by another valid mask.
  """
  num_gt, num_pred = cost.shape[1], cost.shape[2]
  size = max(num_gt, num_pred)
  valid = gt_valid[:, :, tf.newaxis]
  cost = tf.pad(cost * valid, [[0, 0], [0, 0], [0, size - num_pred]])
  dummy_columns = tf.concat(
      [tf.zeros([num_pred]), tf.ones([size - num_pred])], axis=0)
  cost += valid * dummy_columns
  return tf.pad(cost, [[0, 0], [0, size - num_gt], [0, 0]])


def _tf_models_gt_to_pred(cost: tf.Tensor, gt_valid: tf.Tensor) -> tf.Tensor:
  """int32 [B, M] by tf-models-official's square Hungarian solver."""
  num_gt, num_pred = cost.shape[1], cost.shape[2]
  _, matched = matchers.hungarian_matching(_pad_to_square(cost, gt_valid))
  return hungarian.index_of_true(matched[:, :num_gt, :num_pred], axis=2)


_compiled_min_cost_matching = tf.function(
    hungarian.min_cost_matching, jit_compile=True)


def _shortest_path_gt_to_pred(cost: tf.Tensor, gt_valid: tf.Tensor,
                              compile_solver: bool) -> tf.Tensor:
  """int32 [B, M] by the shortest-augmenting-path solver.

  With M <= N only the valid rows are inserted. With M > N the problem is solved
  transposed (every prediction takes a ground-truth column) and invalid columns
  cost 1, more than any real cost (<= 0), so they are only used when the valid
  masks are fewer than the predictions.
  """
  solve = (_compiled_min_cost_matching if compile_solver else
           hungarian.min_cost_matching)
  num_gt, num_pred = cost.shape[1], cost.shape[2]
  if num_gt <= num_pred:
    return solve(cost, gt_valid > 0)
  transposed = tf.where((gt_valid > 0)[:, tf.newaxis, :],
                        tf.transpose(cost, [0, 2, 1]), 1.0)
  all_rows = tf.ones(tf.shape(transposed)[:2], tf.bool)
  pred_to_gt = solve(transposed, all_rows)
  return hungarian.first_position(pred_to_gt, num_gt)


@gin.configurable
def hungarian_match(similarity: tf.Tensor, gt_valid: tf.Tensor,
                    solver: str = 'shortest_path',
                    compile_solver: bool = True) -> Matching:
  """Matches predictions to valid ground-truth masks, maximising total similarity.

  Args:
    similarity: float32 [B, M, N], in [0, 1] (e.g. `pq_style_similarity`).
    gt_valid: float32 or bool [B, M], 1 for real ground-truth masks.
    solver: 'shortest_path' or 'tf_models' (see the module docstring).
    compile_solver: Run the 'shortest_path' solver as its own XLA computation
      (no effect inside a step that is XLA-compiled as a whole).

  Returns:
    A `Matching`. Every valid mask is matched when N >= number of valid masks.
  """
  if solver not in _SOLVERS:
    raise ValueError(f'solver must be one of {_SOLVERS}, got {solver!r}')
  num_gt, num_pred = similarity.shape[1], similarity.shape[2]
  if num_gt is None or num_pred is None:
    raise ValueError(f'similarity needs static M and N, got shape {similarity.shape}')
  gt_valid = tf.cast(gt_valid, tf.float32)
  cost = -tf.stop_gradient(similarity)
  if solver == 'shortest_path':
    gt_to_pred = _shortest_path_gt_to_pred(cost, gt_valid, compile_solver)
  else:
    gt_to_pred = _tf_models_gt_to_pred(cost, gt_valid)
  gt_to_pred = tf.where(gt_valid > 0, gt_to_pred, -1)
  return Matching(gt_to_pred=gt_to_pred,
                  pred_to_gt=hungarian.first_position(gt_to_pred, num_pred))


def pq_style_similarity(class_probs: tf.Tensor, mask_probs: tf.Tensor,
                        gt_masks: tf.Tensor,
                        gt_class_one_hot: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """The two factors of MaX-DeepLab's PQ-style similarity.

  Args:
    class_probs: float32 [B, N, C + 1].
    mask_probs: float32 [B, P, N], softmax over the N masks, zero on ignored pixels.
    gt_masks: float32 [B, P, M].
    gt_class_one_hot: float32 [B, M, C].

  Returns:
    (class_probability, mask_dice), each float32 [B, M, N]; their product is the
    similarity to maximise.
  """
  return (class_similarity(gt_class_one_hot, class_probs),
          mask_dice_similarity(gt_masks, mask_probs))


def matched_permutation(matching: Matching, num_pred: int) -> tf.Tensor:
  """float32 [B, M, N]: 1 where ground-truth mask m is matched to prediction n."""
  return tf.one_hot(matching.gt_to_pred, num_pred, dtype=tf.float32)
