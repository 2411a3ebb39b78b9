"""Every script in scripts/ runs end to end at tiny size and prints its table.

Each runs in its own process (the scripts define their own absl flags), with
this repository first on PYTHONPATH. `demo.py` is exercised by `make demo` (a
real training run, minutes); every other script must be listed here, so a new
script cannot go untested. Scripts whose tiny run still traces a whole training
step or compiles the loss with XLA are `slow`.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# `make demo` runs demo.py; make_deeplab2_fixtures.py needs a DeepLab2 checkout
# (tests/checkpoints/test_fixture_generator.py); bench_deploy.py converts models to
# every format (minutes each), the paths tests/serving/test_deploy_formats.py runs;
# bench_train_vs_deeplab2.py builds DeepLab2's full-size MaX-DeepLab-S
# (tests/scripts/test_bench_train_vs_deeplab2.py).
_NOT_SMOKED = {'demo.py', 'make_deeplab2_fixtures.py', 'bench_deploy.py',
               'bench_train_vs_deeplab2.py'}
_TINY_MODEL = ['--num_classes=3']

# (script, tiny arguments, a line the table must contain).
SMOKE_RUNS = (
    ('model_stats.py', ['--models=tiny', '--height=65', '--width=65',
                        '--num_clusters=8'] + _TINY_MODEL, '| tiny | '),
    ('bench_model.py', ['--models=tiny', '--sizes=65x65', '--xla=false', '--rounds=1',
                        '--matmul_size=64'] + _TINY_MODEL, '| tiny | 65x65 | False |'),
    ('profile_model.py', ['--model=tiny', '--size=65x65', '--runs=1'] + _TINY_MODEL,
     '| component | op time (s) |'),
    pytest.param('profile_model.py', ['--model=tiny', '--size=65x65', '--runs=1',
                                      '--step=forward_backward'] + _TINY_MODEL,
                 '| loss | ', marks=pytest.mark.slow),
    ('bench_layers.py', ['--baseline=HEAD', '--models=tiny', '--size=65', '--rounds=1']
     + _TINY_MODEL, '| tiny | decoder_stage2_block0 | 17x17x'),
    ('bench_evaluator.py', ['--num_images=1', '--sizes=coco:48x64,cityscapes:64x128',
                            '--interval_images=coco:20'], '| coco | 20 | 133 |'),
    ('bench_input_pipeline.py', ['--num_images=2', '--num_batches=1',
                                 '--warmup_batches=1', '--batch_size=1',
                                 '--max_num_masks=8', '--num_workers=1',
                                 '--sizes=64x64', '--work_dir={tmp}'], '| 64x64 | 65x65 |'),
    ('bench_objective.py', ['--batch=1', '--size=33', '--num_pred=8', '--num_slots=8',
                            '--num_masks=4', '--rounds=1', '--skip_loss',
                            '--solvers=shortest_path'], '| 4 | '),
    pytest.param('bench_objective.py', ['--batch=1', '--size=33', '--num_pred=8',
                                        '--num_slots=8', '--num_masks=4',
                                        '--loss_masks=4', '--rounds=1'],
                 '| forward + backward, XLA |', marks=pytest.mark.slow),
    # These two trace a real training step (the loss included) in fresh
    # processes: 80-100 s each on 2 cores, so slow.
    pytest.param('bench_train_memory.py', ['--configs=tiny', '--sizes=65',
                                           '--recompute=on', '--time_size=0'],
                 '| tiny | ', marks=pytest.mark.slow),
    pytest.param('bench_train.py', ['--configs=tiny:1:65:4', '--xla=false',
                                    '--rounds=1', '--work_dir={tmp}'],
                 '| tiny | 1 | 65x65 | 4 | false |', marks=pytest.mark.slow),
    pytest.param('bench_train.py', ['--configs=tiny:1:65:4', '--xla=false', '--rounds=1',
                                    '--work_dir={tmp}', '--deterministic=compare'],
                 '| tiny | 1 | 65x65 | 4 | false |', marks=pytest.mark.slow),
    pytest.param('bench_train_memory.py', ['--configs=tiny', '--sizes=65',
                                           '--recompute=off', '--time_size=65',
                                           '--time_configs=tiny', '--time_rounds=1'],
                 '| tiny | ', marks=pytest.mark.slow),
    # The whole policy search: 15 memory probes and 3 timing processes (minutes).
    pytest.param('bench_train_memory.py', ['--search', '--configs=tiny', '--sizes=65',
                                           '--budget_gib=64', '--time_rounds=1',
                                           '--search_group=8'],
                 "build_model.recompute = '", marks=pytest.mark.slow),
)


def _script(run):
  return run.values[0] if hasattr(run, 'values') else run[0]


def test_every_script_is_smoked():
  scripts = {path.name for path in (ROOT / 'scripts').glob('*.py')}
  assert scripts - _NOT_SMOKED == {_script(run) for run in SMOKE_RUNS}


def _run(script, arguments, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([str(ROOT)] + [
                 p for p in [os.environ.get('PYTHONPATH')] if p]))
  command = [sys.executable, str(ROOT / 'scripts' / script)] + [
      argument.format(tmp=tmp_path) for argument in arguments]
  return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                        text=True, check=False)


@pytest.mark.parametrize('script, arguments, expected_line', SMOKE_RUNS)
def test_script_runs_at_tiny_size(script, arguments, expected_line, tmp_path):
  if script == 'bench_layers.py' and subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True).returncode:
    pytest.skip('bench_layers.py compares with a git revision: not a git checkout.')
  process = _run(script, arguments, tmp_path)
  assert process.returncode == 0, process.stderr[-3000:]
  assert expected_line in process.stdout, process.stdout[-3000:]


@pytest.mark.slow  # A memory probe of a training step in a fresh process: ~80 s.
def test_a_policy_search_over_a_budget_even_all_exceeds_names_the_flag(tmp_path):
  # One memory probe ('all' goes first); kMaX has the loss's switch only.
  process = _run('bench_train_memory.py', ['--search', '--configs=kmax_tiny',
                                           '--sizes=65', '--budget_gib=0.001'], tmp_path)
  assert process.returncode == 1, process.stderr[-3000:]
  assert ("kmax_tiny has no recompute parts: only build_model.recompute = 'none' "
          'exists' in process.stdout), process.stdout
  assert 'No policy fits: --budget_gib=0.00' in process.stdout, process.stdout


def test_a_policy_search_reads_its_memory_file_instead_of_measuring(tmp_path):
  # 'all' of kMaX (no recompute parts: the loss's switch only) is in the file and
  # over the budget: the search reports the file's figure and measures nothing.
  memory_file = tmp_path / 'memory.json'
  memory_file.write_text(
      '[{"config": "kmax_tiny", "size": 65, "mode": "forward_backward", '
      '"model_recompute": "none", "loss_recompute": true, "bytes": 3221225472}]')
  process = _run('bench_train_memory.py', [
      '--search', '--configs=kmax_tiny', '--sizes=65', '--budget_gib=1',
      f'--search_memory_file={memory_file}'], tmp_path)
  assert process.returncode == 1, process.stderr[-3000:]
  assert ("even recomputing every part ('all') takes 3.00 GiB" in process.stdout), (
      process.stdout)
  assert f"('none', True) 3.00 GiB ({memory_file})" in process.stderr
