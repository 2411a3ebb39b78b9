r"""Benchmarks training steps/s of the real trainer on CPU, with and without XLA.

Uses the synthetic set (made under --work_dir if missing) and the project's
trainer (`train_lib.build_trainer` of a `PanopticTask`): data pipeline, model (a `modeling.builder`
config), PanopticLoss, AdamW. Every configuration's trainer is built and traced
first (all of them live at once), then the benchmarks' harness
(`analysis.timing.interleaved`) runs one step of each per round, so all meet the
same machine load. Prints a Markdown table. The synthetic set has 8 classes, so
the class heads are smaller than COCO's; the rest of each network is the
configured one.

  python scripts/bench_train.py --configs=tiny:8:129:16,cmt_deeplab_s:1:641

The host overhead of the train loop (ExperimentConfig.in_graph_loop): each timed
call is one train loop of --steps_per_loop steps, in Python (a `tf.function`
call per step) or in graph (one `tf.while_loop`); a small config makes the
per-step overhead visible, and the table adds the in-graph / Python ratio of
seconds per loop (median and quartiles of the per-round ratios):

  python scripts/bench_train.py --configs=tiny:1:33:8 --xla=false \
      --loops=python,in_graph --steps_per_loop=20 --rounds=15

The cost of bitwise-repeatable training (ExperimentConfig.deterministic): op
determinism is process-wide, so --deterministic=compare measures without and
with it in two processes running at the same time (so that both meet the same
machine load; each gets about half of the cores) and prints their ratio:

  python scripts/bench_train.py --configs=tiny:8:129:16,cmt_deeplab_s:1:129 \
      --xla=false --deterministic=compare
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import gin
import tensorflow as tf

from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import synthetic
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('work_dir', '/tmp/bench_train', 'Scratch folder for the data set.')
flags.DEFINE_list('configs', ['tiny:8:129:16', 'cmt_deeplab_s:1:641'],
                  'model:batch:crop[:clusters] (clusters default: 128, also the '
                  'mask slots).')
flags.DEFINE_list('xla', ['false', 'true'], 'XLA settings to measure.')
flags.DEFINE_list('loops', ['python'], 'Train loops to measure: python, in_graph '
                  '(ExperimentConfig.in_graph_loop).')
flags.DEFINE_integer('steps_per_loop', 1, 'Steps per timed train loop.')
flags.DEFINE_integer('rounds', 5, 'Timed rounds, one loop of every configuration each.')
flags.DEFINE_enum('deterministic', 'off', ['off', 'on', 'compare'],
                  'ExperimentConfig.deterministic: off, on, or compare (each in its own '
                  'process, then a table of both and their ratio).')
flags.DEFINE_string('json_output', None, 'Also write {config: steps/s} as JSON here.')
_DEFAULT_CLUSTERS = 128
_SMALL_IMAGES = (128, 128)  # Synthetic images for crops up to 129.
_LARGE_IMAGES = (480, 640)
_LOOPS = ('python', 'in_graph')


def parse_config(spec: str):
  """'tiny:8:129:16' -> ('tiny', 8, 129, 16); a clear error naming the flag."""
  fields = spec.split(':')
  try:
    if len(fields) not in (3, 4):
      raise ValueError
    model, batch, crop = fields[0], int(fields[1]), int(fields[2])
    clusters = int(fields[3]) if len(fields) == 4 else _DEFAULT_CLUSTERS
  except ValueError:
    raise ValueError(f'--configs entries must be model:batch:crop[:clusters], '
                     f'got {spec!r}.') from None
  if model not in builder.MODELS:
    raise ValueError(f'--configs: unknown model {model!r}; one of {sorted(builder.MODELS)}.')
  return model, batch, crop, clusters


def _records(crop: int) -> str:
  """The synthetic training shards for this crop size (made if missing)."""
  height, width = _SMALL_IMAGES if crop <= _SMALL_IMAGES[0] + 1 else _LARGE_IMAGES
  root = os.path.join(FLAGS.work_dir, f'{height}x{width}')
  pattern = os.path.join(root, 'records', 'train-*')
  if not tf.io.gfile.glob(pattern):
    json_path = synthetic.write_split(root, 'train', 16,
                                      synthetic.SyntheticConfig(height, width), seed=0)
    convert_coco.convert_split('synthetic', 'train', os.path.join(root, 'train'),
                               json_path, None, os.path.join(root, 'records'),
                               num_shards=2, num_workers=1)
  return pattern


def traced_trainer(model: str, batch: int, crop: int, clusters: int, xla: bool,
                   deterministic: bool = False, in_graph_loop: bool = False):
  """A trainer of the configuration that has run (traced) one train loop."""
  gin.clear_config()
  gin.bind_parameter('build_model.name', model)
  gin.bind_parameter('build_model.num_clusters', clusters)
  gin.bind_parameter('OptimizerConfig.warmup_steps', 0)
  config = experiment.ExperimentConfig(
      dataset_name='synthetic', train_file_pattern=_records(crop),
      train_batch_size=batch, train_crop_size=(crop, crop), max_num_masks=clusters,
      train_steps=10**6, jit_compile=xla, in_graph_loop=in_graph_loop, seed=0,
      deterministic=deterministic)
  trainer = train_lib.build_trainer(task_lib.PanopticTask(config),
                                    tf.distribute.get_strategy(), 'train')
  trainer.train(tf.constant(FLAGS.steps_per_loop))
  return trainer


def _check_loops():
  unknown = set(FLAGS.loops) - set(_LOOPS)
  if unknown:
    raise ValueError(f'--loops: unknown {sorted(unknown)}; expected some of {_LOOPS}.')


def measure(deterministic: bool):
  """({(model, batch, crop, clusters, xla, loop): steps/s}, the timings)."""
  _check_loops()
  calls = {}
  for spec in FLAGS.configs:
    model, batch, crop, clusters = parse_config(spec)
    for xla in FLAGS.xla:
      for loop in FLAGS.loops:
        trainer = traced_trainer(model, batch, crop, clusters, xla == 'true', deterministic,
                                 loop == 'in_graph')
        calls[(model, batch, crop, clusters, xla, loop)] = (
            lambda t=trainer: t.train(tf.constant(FLAGS.steps_per_loop)))
  timings = timing.interleaved(calls, FLAGS.rounds)
  return {key: FLAGS.steps_per_loop / timings.median(key) for key in calls}, timings


def measure_in_processes(settings=('off', 'on')):
  """{setting: `measure`'s rates}, each setting in a child process, all at once."""
  for spec in FLAGS.configs:  # Made once, before the processes share them.
    _records(parse_config(spec)[2])
  with tempfile.TemporaryDirectory() as scratch:
    paths = {s: os.path.join(scratch, f'{s}.json') for s in settings}
    children = [subprocess.Popen([
        sys.executable, os.path.abspath(__file__), f'--work_dir={FLAGS.work_dir}',
        f'--configs={",".join(FLAGS.configs)}', f'--xla={",".join(FLAGS.xla)}',
        f'--rounds={FLAGS.rounds}', f'--loops={",".join(FLAGS.loops)}',
        f'--steps_per_loop={FLAGS.steps_per_loop}', f'--deterministic={s}',
        f'--json_output={path}'])
                for s, path in paths.items()]
    if any(child.wait() for child in children):
      raise RuntimeError('A benchmark process failed (its output is above).')
    rates = {}
    for setting, path in paths.items():
      with open(path) as f:
        rates[setting] = {tuple(json.loads(key)): rate for key, rate in json.load(f).items()}
    return rates


def main(argv):
  del argv
  print(f'\nMachine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}; median of '
        f'{FLAGS.rounds} interleaved rounds after warm-up, {FLAGS.steps_per_loop} step(s) '
        'per timed train loop.')
  if FLAGS.deterministic == 'compare':
    rates = measure_in_processes()
    off, on = rates['off'], rates['on']
    print('| model | batch | crop | clusters | XLA | loop | steps/s | deterministic steps/s | '
          'ratio |')
    print('|---|---|---|---|---|---|---|---|---|')
    for key, rate in off.items():
      model, batch, crop, clusters, xla, loop = key
      print(f'| {model} | {batch} | {crop}x{crop} | {clusters} | {xla} | {loop} | {rate:.3f} | '
            f'{on[key]:.3f} | {on[key] / rate:.2f} |')
    return
  rates, timings = measure(FLAGS.deterministic == 'on')
  if FLAGS.json_output:
    with open(FLAGS.json_output, 'w') as f:
      json.dump({json.dumps(key): rate for key, rate in rates.items()}, f)
  print(f'deterministic: {FLAGS.deterministic}')
  print('| model | batch | crop | clusters | XLA | loop | steps/s | ms/step | images/s |')
  print('|---|---|---|---|---|---|---|---|---|')
  for (model, batch, crop, clusters, xla, loop), rate in rates.items():
    print(f'| {model} | {batch} | {crop}x{crop} | {clusters} | {xla} | {loop} | {rate:.3f} | '
          f'{1000.0 / rate:.1f} | {rate * batch:.2f} |')
  if len(FLAGS.loops) == 2:
    _print_loop_ratios(rates, timings)


def _print_loop_ratios(rates, timings):
  """The in-graph / Python ratios of seconds per loop, and the saved ms per step."""
  print('\n| model | batch | crop | clusters | XLA | in-graph / Python seconds (median '
        '[quartiles]) | host ms/step saved |')
  print('|---|---|---|---|---|---|---|')
  for key in rates:
    if key[-1] != 'python':
      continue
    in_graph = key[:-1] + ('in_graph',)
    median, low, high = timings.ratio_summary(in_graph, key)
    saved = 1000.0 * (1.0 / rates[key] - 1.0 / rates[in_graph])
    model, batch, crop, clusters, xla = key[:-1]
    print(f'| {model} | {batch} | {crop}x{crop} | {clusters} | {xla} | {median:.3f} '
          f'[{low:.3f}, {high:.3f}] | {saved:.2f} |')


if __name__ == '__main__':
  app.run(main)
