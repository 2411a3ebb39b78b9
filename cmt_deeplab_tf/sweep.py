r"""Runs a gin ablation sweep: train + eval per point and seed, each in its own process.

After `make demo` (its TFRecords in demo_output/tfrecords): five seeds of two
points, each compared with the baseline paired by seed, as tasks of a local Ray
instance (one CPU each):

  python -m cmt_deeplab_tf.sweep --base_gin=synthetic/demo.gin \
      --tfrecord_dir=demo_output/tfrecords --sweep_dir=runs/sweep \
      --points='baseline:' \
      --points='no_pixel_update:ClusteringTransformerLayer.update_pixels=False' \
      --seeds=0,1,2,3,4 --baseline=baseline \
      --gin_param=ExperimentConfig.train_steps=600

A grid (cross product of the axes), the config's own seed, one run after the other:

  python -m cmt_deeplab_tf.sweep --base_gin=synthetic/demo.gin \
      --tfrecord_dir=demo_output/tfrecords --sweep_dir=runs/grid --runner=local \
      --grid='ClusteringTransformerLayer.update_pixels=[True,False]' \
      --grid='ClusteringTransformerLayer.use_assignment_residual=[True,False]'

Each run trains in `<sweep_dir>/<point>/seed-<s>` (`<sweep_dir>/<point>` without
--seeds; log in `<sweep_dir>/logs/`). Running the same command again skips
finished runs and resumes the others from their checkpoints. Tables:
`<sweep_dir>/results.md`, `results.csv` (per point: mean and sd over seeds, the
difference from --baseline with its 95% interval and verdict), `runs.csv` (per
run), plot `results.png`. On a Ray cluster: --ray_address=HOST:PORT and paths all
nodes see. Exits non-zero when a run failed.
"""
import glob
import os
import sys

from absl import app
from absl import flags

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_report
from cmt_deeplab_tf.analysis import sweep_runner

# The config fields --tfrecord_dir binds, the file names `convert_coco` writes for
# them, and the modes that read them.
_SPLIT_PATTERNS = (('ExperimentConfig.train_file_pattern', 'train-*', ('train_and_eval',)),
                   ('ExperimentConfig.eval_file_pattern', 'val-*', sweep.MODES))
_DETERMINISTIC = 'ExperimentConfig.deterministic'


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the sweep's flags in `flag_values`."""
  define = dict(flag_values=flag_values)
  flags.DEFINE_string('base_gin', None, 'The gin file every run starts from.', **define)
  flags.DEFINE_multi_string('grid', [], "An axis 'Scope.param=[v1,v2]'; points are "
                            'the cross product of all axes.', **define)
  flags.DEFINE_multi_string('points', [], "A named point 'name:binding;binding' "
                            "('baseline:' for none); instead of --grid.", **define)
  flags.DEFINE_string('sweep_dir', None, 'Model dirs, logs, tables and plot.', **define)
  flags.DEFINE_multi_string('gin_param', [], 'Bindings common to every run, applied '
                            "before the point's own.", **define)
  flags.DEFINE_string('tfrecord_dir', None, "Binds the train and eval file patterns to "
                      "this directory's train-* and val-* shards (as convert_coco and "
                      'the demo write them).', **define)
  flags.DEFINE_list('seeds', [], 'Run every point once per seed, binding '
                    f'{sweep.SEED_PARAMETER}; none: once, with the config\'s seed.',
                    **define)
  flags.DEFINE_string('baseline', None, 'The point the others are compared with, '
                      'paired by seed.', **define)
  flags.DEFINE_bool('deterministic', False, f'Bind {_DETERMINISTIC}=True in every run '
                    '(repeatable training).', **define)
  flags.DEFINE_enum('mode', 'train_and_eval', sweep.MODES,
                    'Mode of the train CLI (one that writes eval results).', **define)
  flags.DEFINE_enum('runner', 'ray', sweep_runner.RUNNERS, 'ray: runs as Ray tasks; '
                    'local: one after the other, without Ray.', **define)
  flags.DEFINE_string('ray_address', None, 'A Ray cluster to join; none: a local '
                      'instance for the sweep.', **define)
  flags.DEFINE_integer('local_cpus', None, 'CPUs of the local Ray instance; default: '
                       'all of the machine\'s.', lower_bound=1, **define)
  flags.DEFINE_float('cpus_per_point', 1.0, 'CPUs each run declares (and its '
                     "TensorFlow's intra-op threads).", lower_bound=0.0, **define)
  flags.DEFINE_float('gpus_per_point', 0.0, 'GPUs each run declares.', lower_bound=0.0,
                     **define)
  flags.DEFINE_integer('max_retries', 1, 'Times a failed run is started again.',
                       lower_bound=0, **define)


def points_from_flags(grid, named):
  """The sweep's points from --grid or --points (exactly one of them)."""
  if bool(grid) == bool(named):
    raise app.UsageError('Give either --grid or --points (exactly one of them).')
  return sweep.grid_points(grid) if grid else sweep.named_points(named)


def _parse_seeds(values):
  try:
    return [int(value) for value in values]
  except ValueError as e:
    raise app.UsageError(f'--seeds={",".join(values)} is not a list of integers.') from e


def common_bindings(flag_values: flags.FlagValues):
  """--gin_param plus the bindings of --tfrecord_dir and --deterministic.

  Raises:
    ValueError: naming the flag, on a --tfrecord_dir without the shards the
      mode reads, or a --gin_param that binds what a flag binds.
  """
  bindings = list(flag_values.gin_param)
  if flag_values.tfrecord_dir:
    directory = os.path.abspath(flag_values.tfrecord_dir)
    sweep.check_unbound(bindings, [name for name, _, _ in _SPLIT_PATTERNS],
                        '--tfrecord_dir', '--gin_param')
    for name, pattern, modes in _SPLIT_PATTERNS:
      if flag_values.mode in modes and not glob.glob(os.path.join(directory, pattern)):
        raise ValueError(f'--tfrecord_dir={flag_values.tfrecord_dir} holds no {pattern} '
                         'shards (make demo, or convert_coco, writes them).')
      bindings.append(f"{name}='{os.path.join(directory, pattern)}'")
  if flag_values.deterministic:
    sweep.check_unbound(bindings, [_DETERMINISTIC], '--deterministic', '--gin_param')
    bindings.append(f'{_DETERMINISTIC}=True')
  return bindings


def plan_from_flags(flag_values: flags.FlagValues):
  """(points, seeds, settings) of the sweep the flags describe.

  Raises:
    app.UsageError: naming the flag, on any bad flag.
  """
  try:
    base_gin = os.path.abspath(config_files.resolve(flag_values.base_gin, '--base_gin'))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  seeds = _parse_seeds(flag_values.seeds)
  try:
    points = points_from_flags(flag_values.grid, flag_values.points)
    bindings = common_bindings(flag_values)
    if seeds:
      sweep.check_unbound(bindings, [sweep.SEED_PARAMETER], '--seeds', '--gin_param')
    sweep.runs(points, seeds)
    sweep.check_baseline(points, flag_values.baseline)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  settings = sweep.Settings(os.path.abspath(flag_values.sweep_dir),
                            base_gin, tuple(bindings),
                            flag_values.mode)
  return points, seeds, settings


def runner_from_flags(flag_values: flags.FlagValues):
  """The runner --runner names, configured by the Ray flags."""
  if flag_values.runner == 'local':
    return sweep_runner.LocalRunner()
  return sweep_runner.RayRunner(flag_values.ray_address, flag_values.local_cpus,
                                flag_values.cpus_per_point, flag_values.gpus_per_point)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  points, seeds, settings = plan_from_flags(FLAGS)
  outcomes = sweep_runner.run_sweep(points, settings, seeds, runner_from_flags(FLAGS),
                                    FLAGS.max_retries, FLAGS.baseline, report=flush_print)
  with open(os.path.join(settings.sweep_dir, sweep_report.MARKDOWN_FILE)) as f:
    print('\n' + f.read())
  failed = [o for o in outcomes if o.status == sweep.FAILED]
  if failed:
    sys.exit(f'{len(failed)} of {len(outcomes)} runs failed: ' +
             ', '.join(f'{o.run.name} (log {o.log_path})' for o in failed))


def flush_print(message: str) -> None:
  print(message, flush=True)


def run():
  define_flags()
  flags.mark_flags_as_required(['base_gin', 'sweep_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
