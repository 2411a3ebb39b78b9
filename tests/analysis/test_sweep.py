"""Tests of the gin ablation sweep (a fake train command keeps most of them fast)."""
import csv
import json
import os
import sys

import pytest

from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_report
from cmt_deeplab_tf.analysis import sweep_runner

FAKE_TRAIN = (sys.executable, os.path.join(os.path.dirname(__file__), 'fake_train.py'))
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPDATE = 'ClusteringTransformerLayer.update_pixels'
RESIDUAL = 'ClusteringTransformerLayer.use_assignment_residual'


def _settings(sweep_dir, common=()):
  return sweep.Settings(str(sweep_dir), 'base.gin', tuple(common),
                        command_prefix=FAKE_TRAIN)


def _run(points, sweep_dir, common=(), **kwargs):
  return sweep_runner.run_sweep(points, _settings(sweep_dir, common),
                                report=lambda message: None, **kwargs)


def _calls(sweep_dir, name):
  with open(os.path.join(sweep_dir, name, 'calls')) as f:
    return int(f.read())


def _csv_rows(sweep_dir, name=sweep_report.CSV_FILE):
  with open(os.path.join(sweep_dir, name)) as f:
    return list(csv.DictReader(f))


def test_grid_is_the_cross_product_with_readable_names():
  points = sweep.grid_points([f'{UPDATE}=[True,False]', f'{RESIDUAL}=[True, False]'])
  assert [p.name for p in points] == [
      'update_pixels-True__use_assignment_residual-True',
      'update_pixels-True__use_assignment_residual-False',
      'update_pixels-False__use_assignment_residual-True',
      'update_pixels-False__use_assignment_residual-False']
  assert points[1].bindings == (f'{UPDATE}=True', f'{RESIDUAL}=False')


def test_grid_values_are_written_back_as_gin_literals_with_safe_names():
  points = sweep.grid_points(["A.size=[(65, 65), 'x y']"])
  assert [p.bindings for p in points] == [('A.size=(65, 65)',), ("A.size='x y'",)]
  assert [p.name for p in points] == ['size-65_65', 'size-x_y']


@pytest.mark.parametrize('axis', ['A.x', 'A.x=True', 'A.x=[]', 'A.x=[@f]', '=[1]'])
def test_bad_grid_axis_names_the_flag(axis):
  with pytest.raises(ValueError, match='--grid'):
    sweep.grid_points([axis])


def test_grid_points_with_the_same_name_are_rejected():
  with pytest.raises(ValueError, match='--grid .*same name'):
    sweep.grid_points(["A.s=['a b', 'a_b']"])


def test_named_points_one_change_at_a_time():
  points = sweep.named_points(['baseline:', f'both:{UPDATE}=False; {RESIDUAL}=False'])
  assert points == [sweep.Point('baseline', ()),
                    sweep.Point('both', (f'{UPDATE}=False', f'{RESIDUAL}=False'))]


@pytest.mark.parametrize('specs', [['no_colon'], ['bad name:A.x=1'], ['a:', 'a:A.x=1']])
def test_bad_named_points_name_the_flag(specs):
  with pytest.raises(ValueError, match='--points'):
    sweep.named_points(specs)


def test_runs_are_every_point_with_every_seed_in_its_own_dir_and_log():
  points = sweep.named_points(['a:', 'b:A.x=1'])
  runs = sweep.runs(points, [3, 7])
  assert [(r.point.name, r.seed) for r in runs] == [('a', 3), ('a', 7), ('b', 3), ('b', 7)]
  assert runs[3].bindings == ('A.x=1', 'ExperimentConfig.seed=7')
  assert runs[3].model_dir('/s') == '/s/b/seed-7'
  assert runs[3].log_path('/s') == '/s/logs/b-seed-7.log'
  unseeded, = sweep.runs(points[:1])
  assert (unseeded.seed, unseeded.bindings, unseeded.model_dir('/s'),
          unseeded.log_path('/s')) == (None, (), '/s/a', '/s/logs/a.log')


@pytest.mark.parametrize('points, seeds, message', [
    (['a:'], [1, 1], 'repeats'),
    (['a:ExperimentConfig.seed=3'], [1], "--seeds sets ExperimentConfig.seed; point 'a'"),
])
def test_bad_seeds_name_the_flag(points, seeds, message):
  with pytest.raises(ValueError, match=message):
    sweep.runs(sweep.named_points(points), seeds)


def test_train_command_applies_base_then_common_then_point_then_seed():
  run = sweep.Run(sweep.Point('p', ('A.x=False',)), 4)
  settings = sweep.Settings('/runs', 'base.gin', ('A.x=True', 'B.y=1'), 'eval', ('train',))
  assert sweep.train_command(run, settings) == [
      'train', '--mode=eval', '--model_dir=/runs/p/seed-4', '--gin_file=base.gin',
      '--gin_param=A.x=True', '--gin_param=B.y=1', '--gin_param=A.x=False',
      '--gin_param=ExperimentConfig.seed=4']
  default = sweep.train_command(run, sweep.Settings('/runs', 'base.gin'))
  assert default[:3] == [sys.executable, '-m', 'cmt_deeplab_tf.train']


def test_each_run_trains_in_its_own_dir_and_the_tables_hold_its_results(tmp_path):
  points = sweep.named_points(['baseline:', f'no_update:{UPDATE}=False'])
  outcomes = _run(points, tmp_path, common=['C.steps=600'], seeds=[0, 1])
  assert [(o.run.name, o.status, o.attempts) for o in outcomes] == [
      ('baseline/seed-0', 'finished', 1), ('baseline/seed-1', 'finished', 1),
      ('no_update/seed-0', 'finished', 1), ('no_update/seed-1', 'finished', 1)]
  with open(tmp_path / 'no_update' / 'seed-1' / sweep.RESULT_FILE) as f:
    result = json.load(f)
  assert result['step'] == 600  # The last of results-300 and results-600.
  assert result['gin_param'] == ['C.steps=600', f'{UPDATE}=False',
                                 'ExperimentConfig.seed=1']
  rows = _csv_rows(tmp_path, sweep_report.RUNS_CSV_FILE)
  assert [(r['point'], r['seed'], r['PQ'], r['PQ^Th'], r['PQ 95% bootstrap low'],
           r['status'], r['attempts']) for r in rows] == [
      ('baseline', '0', '50.00', '51.00', '48.00', 'finished', '1'),
      ('baseline', '1', '50.00', '51.00', '48.00', 'finished', '1'),
      ('no_update', '0', '51.00', '52.00', '49.00', 'finished', '1'),
      ('no_update', '1', '51.00', '52.00', '49.00', 'finished', '1')]
  assert rows[3]['log'] == str(tmp_path / 'logs' / 'no_update-seed-1.log')


class _UnusableRunner:
  """A runner that must not be started (e.g. no Ray instance for nothing to do)."""

  def __enter__(self):
    raise AssertionError('the runner was started with nothing to run')


def test_running_again_skips_finished_runs_without_starting_the_runner(tmp_path):
  points = sweep.grid_points([f'{UPDATE}=[True,False]'])
  _run(points, tmp_path)
  outcomes = _run(points, tmp_path, runner=_UnusableRunner())
  assert all(o.attempts == 0 and o.status == sweep.FINISHED for o in outcomes)
  assert [_calls(tmp_path, p.name) for p in points] == [1, 1]
  assert [r['status'] for r in _csv_rows(tmp_path, sweep_report.RUNS_CSV_FILE)] == [
      'finished before'] * 2


def test_interrupted_run_resumes_in_its_model_dir(tmp_path):
  points = sweep.named_points(['baseline:', 'crashes:Fake.crash_once=True'])
  first = _run(points, tmp_path)
  assert [o.status for o in first] == [sweep.FINISHED, sweep.FAILED]
  assert not (tmp_path / 'crashes' / sweep.RESULT_FILE).exists()
  second = _run(points, tmp_path)
  assert [o.status for o in second] == [sweep.FINISHED, sweep.FINISHED]
  assert second[1].results['resumed_from'] == 300
  assert (_calls(tmp_path, 'baseline'), _calls(tmp_path, 'crashes')) == (1, 2)
  log = (tmp_path / sweep.LOG_DIR / 'crashes.log').read_text()
  assert log.count('$ ') == 2 and 'interrupted at step 300' in log


def test_failed_run_is_retried_up_to_max_retries_and_reported(tmp_path):
  points = sweep.named_points(['crashes:Fake.crash_once=True', 'fails:Fake.fail=True'])
  outcomes = _run(points, tmp_path, seeds=[5], max_retries=2)
  assert [(o.status, o.attempts) for o in outcomes] == [('finished', 2), ('failed', 3)]
  assert (_calls(tmp_path, 'crashes/seed-5'), _calls(tmp_path, 'fails/seed-5')) == (2, 3)
  status = {r['point']: r['status'] for r in _csv_rows(tmp_path)}
  assert status == {'crashes': '1/1 finished; retried: seed 5 (2 attempts)',
                    'fails': '0/1 finished; failed: seed 5 (3 attempts)'}


def test_failing_run_is_reported_with_its_log(tmp_path):
  points = sweep.named_points(['fails:Fake.fail=True', 'works:'])
  outcomes = _run(points, tmp_path)
  assert [o.status for o in outcomes] == [sweep.FAILED, sweep.FINISHED]
  log_path = str(tmp_path / sweep.LOG_DIR / 'fails.log')
  assert outcomes[0].log_path == log_path
  with open(log_path) as f:
    assert 'fake training failed' in f.read()
  row = _csv_rows(tmp_path, sweep_report.RUNS_CSV_FILE)[0]
  assert (row['point'], row['PQ'], row['status'], row['log']) == (
      'fails', '-', 'failed', log_path)
  assert '| fails | - | - | - | - | - | - | - | - | - | failed | 1 |' in (
      tmp_path / sweep_report.MARKDOWN_FILE).read_text()


def test_run_without_eval_results_counts_as_failed(tmp_path):
  outcome, = _run(sweep.named_points(['silent:Fake.no_eval=True']), tmp_path)
  assert outcome.status == sweep.FAILED and outcome.results is None
  assert not (tmp_path / 'silent' / sweep.RESULT_FILE).exists()


def test_unknown_baseline_names_the_flag(tmp_path):
  with pytest.raises(ValueError, match='--baseline=nope is not one of the points'):
    _run(sweep.named_points(['a:']), tmp_path, baseline='nope')


@pytest.mark.slow
def test_one_run_with_the_real_train_cli(tfrecord_dir, tmp_path):
  common = ['build_model.num_clusters=8', 'OptimizerConfig.warmup_steps=1',
            f"ExperimentConfig.train_file_pattern='{tfrecord_dir}/train-*'",
            f"ExperimentConfig.eval_file_pattern='{tfrecord_dir}/val-*'",
            'ExperimentConfig.train_crop_size=(97, 97)',
            'ExperimentConfig.eval_crop_size=(97, 97)', 'ExperimentConfig.max_num_masks=12',
            'ExperimentConfig.train_batch_size=2', 'ExperimentConfig.eval_batch_size=2',
            'ExperimentConfig.train_steps=2', 'ExperimentConfig.steps_per_loop=1',
            'ExperimentConfig.eval_interval=2']
  points = sweep.named_points([f'no_update:{UPDATE}=False'])
  settings = sweep.Settings(str(tmp_path),
                            os.path.join(REPOSITORY, 'gin_configs/synthetic/demo.gin'),
                            tuple(common))
  outcome, = sweep_runner.run_sweep(points, settings, seeds=[1],
                                    report=lambda message: None)
  assert outcome.status == sweep.FINISHED, open(outcome.log_path).read()
  assert outcome.results['step'] == 2
  assert outcome.results['pq_ci_low'] <= outcome.results['pq_ci_high']
  operative = (tmp_path / 'no_update' / 'seed-1' / 'operative_config.gin').read_text()
  assert 'ClusteringTransformerLayer.update_pixels = False' in operative
  assert 'ExperimentConfig.seed = 1' in operative
