r"""Peak memory of one training step with and without recompute, and its time cost.

Memory: `analysis.cost.training_step_peak_memory` (a fresh process per figure;
the real PanopticLoss, batch 1, COCO's 133 classes and 128 clusters): the growth
of the peak RSS from after the imports (model build, trace, forward, loss,
backward and, in mode `train_step`, the AdamW update and its slots), then in
parentheses from after the model is built (the step alone) and TensorFlow's
peak tensor allocation of the step alone. Mode `forward_backward` stops at the
gradients, as a forward + backward of another implementation is measured. A
process
whose resident memory grows past what the machine has available when it starts
(minus --headroom_gib) is stopped and recorded as not fitting, so a step too big
for the machine cannot push it into swap.

Time: one process per config at --time_size builds the model once and traces
one training step with recompute and one without, then times them in turns
(`analysis.timing`); the cost is the median of the per-round ratios.

  python scripts/bench_train_memory.py \
      --configs=max_deeplab_s,cmt_deeplab_s,cmt_deeplab_l,cmt_deeplab_l_rfn \
      --sizes=641,1025
"""
import json
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['max_deeplab_s', 'cmt_deeplab_s', 'cmt_deeplab_l',
                              'cmt_deeplab_l_rfn'], 'Named model configs.')
flags.DEFINE_list('sizes', ['641', '1025'], 'Square crop sizes of the memory figures.')
flags.DEFINE_list('recompute', ['off', 'on'], 'Recompute settings of the memory figures.')
flags.DEFINE_list('modes', ['train_step'], 'What each memory probe runs: train_step '
                  'and / or forward_backward (analysis.cost.PROBE_MODES).')
flags.DEFINE_integer('time_size', 641, 'Crop size of the step-time comparison (0: skip).')
flags.DEFINE_list('time_configs', ['max_deeplab_s', 'cmt_deeplab_s'],
                  'Configs whose step time is compared (each traces two steps).')
flags.DEFINE_integer('time_rounds', 3, 'Timed steps per setting, in turns.')
flags.DEFINE_float('headroom_gib', 2.0, 'Memory left to the rest of the machine.')
flags.DEFINE_string('time_one', None, 'Internal: time one config in this process.')

NUM_CLASSES, NUM_CLUSTERS = 133, 128
# The model's memory policy (modeling/recompute_policy.py) and the loss's switch, as
# coco/base.gin sets them.
POLICY = {'off': 'none', 'on': 'all'}
RECOMPUTE = {setting: (f"build_model.recompute = '{POLICY[setting]}'",
                       f'PanopticLoss.recompute = {setting == "on"}')
             for setting in POLICY}


def _available_bytes() -> int:
  with open('/proc/meminfo') as f:
    for line in f:
      if line.startswith('MemAvailable:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('/proc/meminfo has no MemAvailable.')


def _memory_cell(name: str, size: int, setting: str, mode: str) -> str:
  """'total (step alone; allocator peak of the step)' in GiB."""
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  limit = _available_bytes() - int(FLAGS.headroom_gib * 2**30)
  try:
    result = cost.training_step_peak_memory(name, NUM_CLASSES, NUM_CLUSTERS, size, size,
                                            RECOMPUTE[setting], memory_limit_bytes=limit,
                                            mode=mode)
  except MemoryError:
    return f'> {limit / 2**30:.1f} (does not fit)'
  except RuntimeError as e:
    return f'failed: {str(e).splitlines()[0][:90]}'  # Its code, and a kill.
  details = '; '.join(f'{result[key] / 2**30:.2f}' for key in
                      ('step_bytes', 'allocator_step_bytes') if key in result)
  return f'{result["bytes"] / 2**30:.2f} ({details})'


def _time_one(name: str, size: int) -> None:
  """In this process: median step seconds with recompute off and on (JSON)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.analysis import timing  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.modeling import builder  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.training import optimization  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.losses import panoptic_loss  # pylint: disable=g-import-not-at-top
  model = cost.build(name, NUM_CLASSES, NUM_CLUSTERS)
  batch = cost.random_training_batch(size, size, NUM_CLASSES, NUM_CLUSTERS)
  trainers = {}
  for setting in ('off', 'on'):
    builder.set_recompute(model, POLICY[setting])
    trainers[setting] = trainer_lib.PanopticTrainer(
        strategy=tf.distribute.get_strategy(), model=model,
        loss_fn=panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=1,
                                           recompute=setting == 'on'),
        optimizer_config=optimization.OptimizerConfig(train_steps=100, warmup_steps=0),
        post_processor=None, evaluator=None,
        train_dataset_fn=lambda _: tf.data.Dataset.from_tensors(batch).repeat())
    trainers[setting].train(tf.constant(1))  # Traced with this switch.
  timings = timing.interleaved(
      {setting: (lambda t=trainer: t.train(tf.constant(1)))
       for setting, trainer in trainers.items()},
      rounds=FLAGS.time_rounds, warmup=0)
  print(json.dumps({'off': timings.median('off'), 'on': timings.median('on'),
                    'ratio': timings.ratio_summary('on', 'off')[0]}), flush=True)


def _time_cell(name: str, size: int) -> str:
  from cmt_deeplab_tf.analysis import cost  # pylint: disable=g-import-not-at-top
  command = [sys.executable, __file__, f'--time_one={name}', f'--time_size={size}',
             f'--time_rounds={FLAGS.time_rounds}']
  limit = _available_bytes() - int(FLAGS.headroom_gib * 2**30)
  with tempfile.TemporaryFile('w+') as out:
    process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, text=True)
    if cost.wait_within_memory(process, limit):
      return f'> {limit / 2**30:.1f} GiB (does not fit)'
    out.seek(0)
    lines = out.read().strip().splitlines()
  if process.returncode != 0 or not lines:
    return f'failed ({process.returncode})'
  seconds = json.loads(lines[-1])
  return (f'{seconds["off"]:.2f} / {seconds["on"]:.2f} s '
          f'(+{100 * (seconds["ratio"] - 1):.0f}%)')


def main(argv):
  del argv
  if FLAGS.time_one:
    _time_one(FLAGS.time_one, FLAGS.time_size)
    return
  sizes = [int(s) for s in FLAGS.sizes]
  settings = FLAGS.recompute
  header = ['config', 'mode'] + [f'{s}x{s} {setting} (GiB)' for s in sizes
                                 for setting in settings]
  if FLAGS.time_size:
    header.append(f'step time {FLAGS.time_size}: off / on')
    timed = set(FLAGS.time_configs)
  rows = []
  for name in FLAGS.configs:
    for index, mode in enumerate(FLAGS.modes):
      row = [name, mode] + [_memory_cell(name, size, setting, mode)
                            for size in sizes for setting in settings]
      if FLAGS.time_size:
        row.append(_time_cell(name, FLAGS.time_size) if name in timed and not index
                   else '-')
      rows.append(row)
      print(' | '.join(row), file=sys.stderr, flush=True)  # Progress.
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
  app.run(main)
