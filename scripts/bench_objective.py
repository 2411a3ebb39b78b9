"""Benchmarks the Hungarian matcher and the full training loss.

Realistic case: batch 8, N = 128 clusters, M = 128 ground-truth slots of which
`--num_masks` are real, targets at 641 x 641 and mask logits at stride 4
(161 x 161). Predictions are noisy versions of the ground truth (a partly trained
model), so the similarity matrices have the structure the matcher meets in
training. Compares, in one run:
- the in-graph matchers (our shortest-augmenting-path solver, the default, and
  tf-models-official's Hungarian) in a tf.function and in an XLA-compiled one
  (ours also with its own XLA computation switched off, `compile_solver=False`);
- scipy's linear_sum_assignment per image, alone and as a round trip from a
  tf.function (tf.numpy_function: device -> host -> device);
- the full PanopticLoss forward (and forward + backward) with and without XLA.
All candidates of a table are timed in turns by the benchmarks' harness
(`analysis.timing.interleaved`). Prints Markdown tables of median wall times,
with the matcher times as medians of per-round ratios to the scipy round trip,
for several numbers of real ground-truth masks (COCO images average 7.7 object
instances, Lin et al. 2014, plus a few stuff segments; 128 is the padded
capacity, the worst case).

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_objective.py
"""
import argparse

import numpy as np
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

from cmt_deeplab_tf import common
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.losses import loss_targets
from cmt_deeplab_tf.losses import matching
from cmt_deeplab_tf.losses import panoptic_loss

NUM_CLASSES = 133
SCIPY_ROUND_TRIP = 'scipy round trip'


def make_case(batch, size, num_slots, num_masks, num_pred, seed=0):
  """Voronoi ground truth and noisy predictions that roughly follow it."""
  rng = np.random.default_rng(seed)
  h = -(-size // 4)
  ys, xs = np.mgrid[:size, :size]
  mask_index = np.empty((batch, size, size), np.int32)
  for b in range(batch):
    seeds = rng.integers(0, size, (num_masks, 2))
    dist = ((ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2)
    mask_index[b] = np.argmin(dist, axis=-1)
  mask_index[:, :8] = -1  # Some void.
  classes = rng.integers(0, NUM_CLASSES, (batch, num_slots)).astype(np.int32)
  valid = (np.arange(num_slots) < num_masks)[None].repeat(batch, 0)
  targets = {
      common.MASK_INDEX: mask_index,
      common.PIXEL_WEIGHT: (mask_index >= 0).astype(np.float32),
      common.SEMANTIC: np.where(mask_index >= 0, 1, 255).astype(np.int32),
      common.GT_CLASSES: np.where(valid, classes, NUM_CLASSES).astype(np.int32),
      common.GT_IS_THING: np.ones((batch, num_slots), np.float32),
      common.GT_VALID: valid.astype(np.float32),
  }
  # Cluster n predicts ground-truth mask perm[n] (when < num_masks) with noise.
  perm = np.stack([rng.permutation(num_pred) for _ in range(batch)])
  small_index = mask_index[:, ::4, ::4]
  mask_logits = rng.normal(0, 2, (batch, h, h, num_pred)).astype(np.float32)
  class_logits = rng.normal(0, 2, (batch, num_pred, NUM_CLASSES + 1)).astype(np.float32)
  for b in range(batch):
    for n in range(num_pred):
      if perm[b, n] < num_masks:
        mask_logits[b, ..., n] += 4.0 * (small_index[b] == perm[b, n])
        class_logits[b, n, classes[b, perm[b, n]]] += 3.0
  embeddings = rng.normal(size=(batch, h, h, 128)).astype(np.float32)
  outputs = {
      common.CLASS_LOGITS: class_logits,
      common.MASK_LOGITS: mask_logits,
      common.PIXEL_EMBEDDINGS: embeddings / np.linalg.norm(embeddings, axis=-1,
                                                           keepdims=True),
      common.SEMANTIC_LOGITS: rng.normal(size=(batch, h, h, NUM_CLASSES)).astype(
          np.float32),
      common.REFERENCE_MASK_PARAMETERS: rng.normal(size=(batch, num_pred, 5)).astype(
          np.float32),
  }
  return ({k: tf.constant(v) for k, v in targets.items()},
          {k: tf.constant(v) for k, v in outputs.items()})


def similarity_of(targets, outputs):
  prepared = loss_targets.prepare_loss_targets(targets, NUM_CLASSES)
  mask_probs = tf.nn.softmax(loss_targets.flatten_pixels(outputs[common.MASK_LOGITS]))
  class_prob, dice = matching.pq_style_similarity(
      tf.nn.softmax(outputs[common.CLASS_LOGITS]),
      mask_probs * prepared.pixel_valid[..., None], prepared.gt_masks,
      prepared.gt_class_one_hot)
  return class_prob * dice, prepared.gt_valid


def scipy_match(similarity, gt_valid):
  """Per-image scipy solution as gt_to_pred [B, M] (the same output as ours)."""
  gt_to_pred = -np.ones(gt_valid.shape, np.int32)
  for b in range(similarity.shape[0]):
    rows = np.flatnonzero(gt_valid[b])
    r, c = linear_sum_assignment(similarity[b][rows], maximize=True)
    gt_to_pred[b, rows[r]] = c
  return gt_to_pred


def matcher_row(args, num_masks):
  """`Timings` of the matchers for one number of real ground-truth masks."""
  targets, outputs = make_case(args.batch, args.size, args.num_slots, num_masks,
                               args.num_pred)
  similarity, gt_valid = similarity_of(targets, outputs)
  sim_np, valid_np = similarity.numpy(), gt_valid.numpy()

  def round_trip(sim, valid):
    result = tf.numpy_function(scipy_match, [sim, valid], tf.int32)
    return tf.ensure_shape(result, valid.shape)

  in_graph = {}
  for solver in args.solvers:
    variants = [('tf.function', False, True), ('XLA', True, True)]
    if solver == 'shortest_path':  # The solver's own XLA computation, off.
      variants.insert(1, ('tf.function, graph-mode solver', False, False))
    for name, jit, compile_solver in variants:
      in_graph[f'{solver}, {name}'] = tf.function(
          lambda s, v, solver=solver, compile_solver=compile_solver:
          matching.hungarian_match(s, v, solver=solver,
                                   compile_solver=compile_solver).gt_to_pred,
          jit_compile=jit)
  # The solvers must agree on the optimum before their speed means anything.
  reference = scipy_match(sim_np, valid_np)
  for name, fn in in_graph.items():
    ours = fn(similarity, gt_valid).numpy()
    for b in range(args.batch):
      rows = np.flatnonzero(ours[b] >= 0)
      ref_rows = np.flatnonzero(reference[b] >= 0)
      total = sim_np[b][rows, ours[b][rows]].sum()
      ref_total = sim_np[b][ref_rows, reference[b][ref_rows]].sum()
      assert abs(total - ref_total) < 1e-4, (name, b, total, ref_total)
  scipy_round_trip = tf.function(round_trip)
  calls = {SCIPY_ROUND_TRIP: lambda: scipy_round_trip(similarity, gt_valid),
           'scipy, numpy only': lambda: scipy_match(sim_np, valid_np)}
  for name, fn in in_graph.items():
    calls[name] = lambda fn=fn: fn(similarity, gt_valid)
  return timing.interleaved(calls, args.rounds)


def loss_rows(args, num_masks):
  """(name, median seconds) of the full PanopticLoss, forward and forward + backward."""
  targets, outputs = make_case(args.batch, args.size, args.num_slots, num_masks,
                               args.num_pred)
  # Every pixel of instance discrimination would be 26k^2: use DeepLab2's K.
  loss = panoptic_loss.PanopticLoss(NUM_CLASSES)
  variables = {k: tf.Variable(v) for k, v in outputs.items()}

  def forward_backward(t, v):
    with tf.GradientTape() as tape:
      total = loss(t, dict(v))[panoptic_loss.TOTAL]
    return total, tape.gradient(total, v)

  calls = {}
  for name, jit in [('tf.function', False), ('XLA', True)]:
    forward = tf.function(lambda t, o: loss(t, o)[panoptic_loss.TOTAL], jit_compile=jit)
    calls[f'forward, {name}'] = lambda f=forward: f(targets, outputs)
    step = tf.function(forward_backward, jit_compile=jit)
    calls[f'forward + backward, {name}'] = lambda f=step: f(targets, variables)[0]
  timings = timing.interleaved(calls, args.rounds)
  return [(name, timings.median(name)) for name in calls]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--size', type=int, default=641)
  parser.add_argument('--num_pred', type=int, default=128)
  parser.add_argument('--num_slots', type=int, default=128)
  parser.add_argument('--num_masks', default='10,25,50,100,128',
                      help='comma-separated numbers of real ground-truth masks')
  parser.add_argument('--solvers', default='shortest_path,tf_models',
                      help='comma-separated in-graph solvers to time')
  parser.add_argument('--loss_masks', type=int, default=50,
                      help='real masks of the full-loss case')
  parser.add_argument('--rounds', type=int, default=5,
                      help='timed rounds, each calling every candidate once')
  parser.add_argument('--skip_loss', action='store_true')
  args = parser.parse_args()
  args.solvers = args.solvers.split(',')
  counts = [int(n) for n in args.num_masks.split(',')]

  print(f'\nbatch {args.batch}, {args.num_pred} clusters, {args.num_slots} gt slots, '
        f'targets {args.size}x{args.size}, mask logits at stride 4; median ms of '
        f'{args.rounds} interleaved rounds after warm-up; (x) = median of the '
        'per-round ratios to the scipy round trip\n')
  rows = [(n, matcher_row(args, n)) for n in counts]
  names = list(rows[0][1].seconds)
  print('| real masks | ' + ' | '.join(names) + ' |')
  print('|---:|' + '---:|' * len(names))
  for n, timings in rows:
    print(f'| {n} | ' + ' | '.join(
        f'{timings.median(k) * 1e3:.2f} '
        f'({timings.ratio_summary(k, SCIPY_ROUND_TRIP)[0]:.2f})' for k in names) + ' |')
  if not args.skip_loss:
    print(f'\nfull loss, {args.loss_masks} real masks\n')
    print('| what | median time (ms) |')
    print('|---|---:|')
    for name, seconds in loss_rows(args, args.loss_masks):
      print(f'| {name} | {seconds * 1e3:.1f} |')


if __name__ == '__main__':
  main()
