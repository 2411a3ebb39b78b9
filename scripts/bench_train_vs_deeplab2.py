r"""Our training step against DeepLab2's MaX-DeepLab-S, side by side: memory and time.

For each crop of --sizes, DeepLab2's COCO MaX-DeepLab-S built from its source
(`analysis.deeplab2_peer`: forward, DeepLab2's own loss, gradients) and
each shipped config of --configs with the memory policy of each --variants
('shipped': the config's `build_model.recompute` and `PanopticLoss.recompute`;
'all'; 'none'):

- memory, a fresh process per figure (GiB of peak-RSS growth from after the
  imports: build, trace, step; `analysis.cost`): our forward + backward (model,
  PanopticLoss, gradients: what the peer's step does) and our whole train step
  (+ clipping, AdamW and its slots);
- time, one process at each crop: builds the peer and every (config, variant),
  traces each step once, then times them in turns (`analysis.timing.interleaved`,
  --rounds); a ratio is the median of the per-round ratios to the peer's step.

Batch 1, float32, COCO's 133 classes and 128 clusters, random weights.

  PYTHONPATH=. python scripts/bench_train_vs_deeplab2.py --deeplab2_path=/work/dl2 \
      --configs=coco/max_deeplab_s.gin,coco/cmt_deeplab_s.gin --sizes=641,1025
"""
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.analysis import deeplab2_peer
from cmt_deeplab_tf.analysis import paper_tables
from cmt_deeplab_tf.analysis import recompute_search
from cmt_deeplab_tf.analysis import timing

FLAGS = flags.FLAGS
flags.DEFINE_string('deeplab2_path', None, "Folder holding DeepLab2's `deeplab2` "
                    'package with its protos compiled (../shared/tools/setup_deeplab2.sh).')
flags.DEFINE_list('configs', ['coco/max_deeplab_s.gin', 'coco/cmt_deeplab_s.gin'],
                  'Shipped gin configs (or paths) whose model and policy are measured.')
flags.DEFINE_list('variants', ['shipped'], "Memory policies per config: 'shipped' (the "
                  "config's own), 'all', 'none'.")
flags.DEFINE_list('sizes', ['641', '1025'], 'Crops: N (square) or HxW.')
flags.DEFINE_integer('rounds', 3, 'Timed rounds (each runs every step once).')
flags.DEFINE_bool('memory', True, 'Measure peak memory.')
flags.DEFINE_bool('time', True, 'Time the steps.')
flags.DEFINE_bool('train_step', True, 'Also measure our whole train step (memory and '
                  'time), beside the forward + backward pass the peer is measured with.')
flags.DEFINE_float('headroom_gib', 2.0, 'Memory left to the rest of the machine.')
flags.DEFINE_string('time_one', None, 'Internal: time every step at this crop in this '
                    'process; JSON [[label, model name, recompute, loss recompute], ...] '
                    'in --time_steps.')
flags.DEFINE_string('time_steps', None, 'Internal: see --time_one.')

NUM_CLASSES, NUM_CLUSTERS = 133, 128
PEER = 'DeepLab2 MaX-S'
VARIANTS = ('shipped', 'all', 'none')
# One measured setting: (label, model name, build_model.recompute, PanopticLoss.recompute).
Setting = Tuple[str, str, str, bool]


def settings(configs: Sequence[str], variants: Sequence[str]) -> List[Setting]:
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants: unknown {unknown}; choose from {VARIANTS}.')
  result = []
  for config in configs:
    name, recompute, loss_recompute = cost.shipped_policy(config)
    policies = {'shipped': (recompute, loss_recompute), 'all': ('all', True),
                'none': ('none', False)}
    for variant in variants:
      label = f'{config.replace(".gin", "")} ({variant}: {policies[variant][0]!r}, ' \
              f'loss {policies[variant][1]})'
      result.append((label, name, *policies[variant]))
  return result


def _limit_bytes() -> int:
  with open('/proc/meminfo') as f:
    available = next(int(line.split()[1]) * 1024 for line in f
                     if line.startswith('MemAvailable:'))
  return available - int(FLAGS.headroom_gib * 2**30)


def _gib(call) -> str:
  try:
    return f'{call()["bytes"] / 2**30:.2f}'
  except MemoryError:
    return 'does not fit'
  except RuntimeError as e:
    return f'failed: {str(e).splitlines()[0][:80]}'


def memory_rows(height: int, width: int, steps: Sequence[Setting]) -> Dict[str, List[str]]:
  """{label: [forward + backward GiB, train step GiB]}, the peer first."""
  rows = {PEER: [_gib(lambda: deeplab2_peer.peak_memory(
      FLAGS.deeplab2_path, height, width, _limit_bytes())), '-']}
  for label, name, recompute, loss_recompute in steps:
    bindings = recompute_search.bindings(recompute, loss_recompute)
    modes = (cost.FORWARD_BACKWARD, cost.TRAIN_STEP) if FLAGS.train_step else (
        cost.FORWARD_BACKWARD,)
    rows[label] = [_gib(lambda mode=mode: cost.training_step_peak_memory(
        name, NUM_CLASSES, NUM_CLUSTERS, height, width, bindings,
        memory_limit_bytes=_limit_bytes(), mode=mode)) for mode in modes]
    rows[label] += ['-'] * (2 - len(modes))
    print(f'{height}x{width} {label}: {rows[label]}', file=sys.stderr, flush=True)
  return rows


def _time_one(height: int, width: int, steps: Sequence[Setting]) -> None:
  """In this process: every step traced, then timed in turns; prints JSON
  {label: [median seconds, median ratio to the peer]} (our forward + backward
  under '<label> fwd+bwd', our train step under '<label> step')."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.losses import panoptic_loss  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.modeling import builder  # pylint: disable=g-import-not-at-top
  calls = {PEER: deeplab2_peer.train_step(
      deeplab2_peer.build(FLAGS.deeplab2_path, height, width))}
  batch = cost.random_training_batch(height, width, NUM_CLASSES, NUM_CLUSTERS)
  models = {}
  for label, name, recompute, loss_recompute in steps:
    model = models.get(name) or models.setdefault(
        name, cost.build(name, NUM_CLASSES, NUM_CLUSTERS))
    builder.set_recompute(model, recompute)
    loss_fn = panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=1,
                                         recompute=loss_recompute)
    forward_backward = cost.forward_backward_step(model, loss_fn)
    calls[f'{label} fwd+bwd'] = lambda f=forward_backward: f(batch)[0]
    calls[f'{label} fwd+bwd']()  # Traced now: the policy is read when tracing.
    if FLAGS.train_step:
      trainer = cost.step_trainer(model, loss_fn, batch)
      calls[f'{label} step'] = lambda t=trainer: t.train(tf.constant(1))
      calls[f'{label} step']()
  calls[PEER]()
  timings = timing.interleaved(calls, rounds=FLAGS.rounds, warmup=0)
  print(json.dumps({label: [timings.median(label), timings.ratio_summary(label, PEER)[0]]
                    for label in calls}), flush=True)


def time_rows(height: int, width: int,
              steps: Sequence[Setting]) -> Optional[Dict[str, List[float]]]:
  """`_time_one` in a fresh process; None if it went over the machine's memory."""
  command = [sys.executable, __file__, f'--deeplab2_path={FLAGS.deeplab2_path}',
             f'--time_one={height}x{width}', f'--rounds={FLAGS.rounds}',
             f'--train_step={FLAGS.train_step}',
             f'--time_steps={json.dumps([list(s) for s in steps])}']
  try:
    return cost.run_fresh_process(command, _limit_bytes(), f'Timing at {height}x{width}',
                                  env=deeplab2_peer.LEGACY_KERAS)
  except MemoryError:
    return None


def table(height: int, width: int, steps: Sequence[Setting]) -> str:
  memory = memory_rows(height, width, steps) if FLAGS.memory else {}
  times = time_rows(height, width, steps) if FLAGS.time else None
  rows = []
  for label in [PEER] + [step[0] for step in steps]:
    mem = memory.get(label, ['-', '-'])
    time_cells = []
    for key in ([PEER] if label == PEER else [f'{label} fwd+bwd', f'{label} step']):
      seconds, ratio = (times or {}).get(key, (None, None))
      time_cells += (['-', '-'] if seconds is None else
                     [f'{seconds:.2f}', f'{ratio:.3f}'])
    if label == PEER:
      time_cells += ['-', '-']
    rows.append([label, *mem, *time_cells])
  header = ['step', 'fwd+bwd memory (GiB)', 'train step memory (GiB)',
            'fwd+bwd time (s)', f'/ {PEER}', 'train step time (s)', f'/ {PEER}']
  note = ('' if not FLAGS.time or times is not None else
          '\n\nThe timing process went over the memory this machine had free '
          '(--headroom_gib) and was stopped: time fewer --configs / --variants at once.')
  return (f'### {height}x{width}\n\n' + paper_tables.markdown_table(header, rows) +
          note)


def main(argv):
  del argv
  if not FLAGS.deeplab2_path:
    raise app.UsageError('--deeplab2_path is required (the folder holding deeplab2/).')
  deeplab2_peer.check_path(FLAGS.deeplab2_path)
  if FLAGS.time_one:
    _time_one(*timing.parse_size(FLAGS.time_one, '--time_one'),
              [tuple(s) for s in json.loads(FLAGS.time_steps)])
    return
  steps = settings(FLAGS.configs, FLAGS.variants)
  for size in FLAGS.sizes:
    height, width = ((int(size),) * 2 if size.isdigit()
                     else timing.parse_size(size, '--sizes'))
    print(table(height, width, steps) + '\n', flush=True)


if __name__ == '__main__':
  app.run(main)
