"""The sweep CLI's flags, and its --help and README examples as written after `make demo`."""
import glob
import os
import shlex

from absl import app
from absl import flags
import gin
import pytest

from cmt_deeplab_tf import sweep as sweep_cli
from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_runner
from cmt_deeplab_tf.training import experiment
# The configurables a run's config binds, as the train command registers them.
from cmt_deeplab_tf.training import train_lib  # pylint: disable=unused-import

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE_CALL = 'python -m cmt_deeplab_tf.sweep'


def _examples(text):
  """The argument lists of the sweep commands in `text` (continued lines joined)."""
  lines, commands = text.splitlines(), []
  for i, line in enumerate(lines):
    if not line.strip().startswith(MODULE_CALL):
      continue
    command = line
    while command.rstrip().endswith('\\'):
      i += 1
      command = command.rstrip()[:-1] + ' ' + lines[i]
    commands.append(shlex.split(command)[len(MODULE_CALL.split()):])
  return commands


def _flag_values(argv):
  flag_values = flags.FlagValues()
  sweep_cli.define_flags(flag_values)
  flag_values(['sweep', *argv])
  return flag_values


@pytest.fixture
def after_make_demo(tmp_path, monkeypatch):
  """A working dir laid out as the repository after `make demo` (empty shards)."""
  os.symlink(os.path.join(REPOSITORY, 'gin_configs'), tmp_path / 'gin_configs')
  records = tmp_path / 'demo_output' / 'tfrecords'
  records.mkdir(parents=True)
  for split in ('train', 'val'):
    (records / f'{split}-00000-of-00004.tfrecord').write_bytes(b'')
  monkeypatch.chdir(tmp_path)
  yield tmp_path
  gin.clear_config(clear_constants=True)


def _check_example(argv, cwd):
  """Every run of the example gets a config whose data patterns find the demo's shards."""
  flag_values = _flag_values(argv)
  points, seeds, settings = sweep_cli.plan_from_flags(flag_values)
  assert settings.sweep_dir == os.path.join(cwd, flag_values.sweep_dir)
  runs = sweep.runs(points, seeds)
  for run in runs:
    gin.clear_config(clear_constants=True)
    command = sweep.train_command(run, settings)
    experiment.parse_gin([settings.base_gin], [c.split('=', 1)[1] for c in command
                                              if c.startswith('--gin_param=')])
    config = experiment.ExperimentConfig()
    assert glob.glob(config.train_file_pattern) == [
        str(cwd / 'demo_output' / 'tfrecords' / 'train-00000-of-00004.tfrecord')]
    assert glob.glob(config.eval_file_pattern) == [
        str(cwd / 'demo_output' / 'tfrecords' / 'val-00000-of-00004.tfrecord')]
    assert config.seed == (0 if run.seed is None else run.seed)  # demo.gin: seed 0.
  return flag_values, runs


def test_help_examples_run_on_the_demo_data(after_make_demo):
  seeded, grid = _examples(sweep_cli.__doc__)
  flag_values, runs = _check_example(seeded, after_make_demo)
  assert [(r.point.name, r.seed) for r in runs] == [
      (name, seed) for name in ('baseline', 'no_pixel_update') for seed in range(5)]
  assert flag_values.baseline == 'baseline' and flag_values.runner == 'ray'
  assert isinstance(sweep_cli.runner_from_flags(flag_values), sweep_runner.RayRunner)
  assert 'ClusteringTransformerLayer.update_pixels=False' in runs[-1].bindings
  flag_values, runs = _check_example(grid, after_make_demo)
  assert len(runs) == 4 and {r.seed for r in runs} == {None}
  assert isinstance(sweep_cli.runner_from_flags(flag_values), sweep_runner.LocalRunner)


def test_readme_example_runs_on_the_demo_data(after_make_demo):
  with open(os.path.join(REPOSITORY, 'README.md')) as f:
    examples = _examples(f.read())
  assert examples
  for argv in examples:
    flag_values, runs = _check_example(argv, after_make_demo)
    assert flag_values.seeds and flag_values.baseline in [r.point.name for r in runs]


BASE = ['--base_gin=gin_configs/synthetic/demo.gin', '--sweep_dir=runs/s', '--points=a:',
        '--tfrecord_dir=demo_output/tfrecords']


@pytest.mark.parametrize('extra, message', [
    (['--seeds=0,x'], '--seeds=0,x is not a list of integers'),
    (['--seeds=1', '--gin_param=ExperimentConfig.seed=3'],
     '--seeds sets ExperimentConfig.seed; --gin_param binds it'),
    (["--gin_param=ExperimentConfig.eval_file_pattern='x'"],
     '--tfrecord_dir sets ExperimentConfig.eval_file_pattern'),
    (['--baseline=b'], "--baseline=b is not one of the points \\['a'\\]"),
    (['--tfrecord_dir=demo_output'], '--tfrecord_dir=demo_output holds no train-\\* shards'),
    (['--deterministic', '--gin_param=ExperimentConfig.deterministic=False'],
     '--deterministic sets ExperimentConfig.deterministic'),
])
def test_bad_flags_are_named(after_make_demo, extra, message):
  with pytest.raises(app.UsageError, match=message):
    sweep_cli.plan_from_flags(_flag_values(BASE + extra))


def test_deterministic_and_ray_flags(after_make_demo):
  flag_values = _flag_values(BASE + ['--deterministic', '--ray_address=10.0.0.1:6379',
                                     '--cpus_per_point=4', '--gpus_per_point=1'])
  _, _, settings = sweep_cli.plan_from_flags(flag_values)
  assert settings.common_bindings[-1] == 'ExperimentConfig.deterministic=True'
  runner = sweep_cli.runner_from_flags(flag_values)
  assert (runner._address, runner._cpus, runner._gpus) == ('10.0.0.1:6379', 4.0, 1.0)
