"""Tests of the gin ablation sweep (a fake train command keeps most of them fast)."""
import csv
import json
import os
import sys

from absl import app
import pytest

from cmt_deeplab_tf import sweep as sweep_cli
from cmt_deeplab_tf.analysis import sweep

FAKE_TRAIN = (sys.executable, os.path.join(os.path.dirname(__file__), 'fake_train.py'))
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UPDATE = 'ClusteringTransformerLayer.update_pixels'
RESIDUAL = 'ClusteringTransformerLayer.use_assignment_residual'


def _run(points, sweep_dir, common=()):
  return sweep.run_sweep(points, str(sweep_dir), 'base.gin', common,
                         command_prefix=FAKE_TRAIN, report=lambda message: None)


def _calls(sweep_dir, name):
  with open(os.path.join(sweep_dir, name, 'calls')) as f:
    return int(f.read())


def _csv_rows(sweep_dir):
  with open(os.path.join(sweep_dir, sweep.CSV_FILE)) as f:
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


def test_cli_takes_exactly_one_of_grid_and_points():
  with pytest.raises(app.UsageError, match='--grid or --points'):
    sweep_cli.points_from_flags([], [])
  with pytest.raises(app.UsageError, match='--grid or --points'):
    sweep_cli.points_from_flags(['A.x=[1]'], ['a:'])


def test_train_command_applies_base_then_common_then_point_bindings():
  point = sweep.Point('p', ('A.x=False',))
  assert sweep.train_command(point, '/runs/p', 'base.gin', ['A.x=True', 'B.y=1'],
                             'train_and_eval', ('train',)) == [
      'train', '--mode=train_and_eval', '--model_dir=/runs/p', '--gin_file=base.gin',
      '--gin_param=A.x=True', '--gin_param=B.y=1', '--gin_param=A.x=False']


def test_each_point_runs_in_its_own_dir_and_the_tables_hold_its_results(tmp_path):
  points = sweep.named_points(['baseline:', f'no_update:{UPDATE}=False'])
  outcomes = _run(points, tmp_path, common=['C.steps=600'])
  assert [o.status for o in outcomes] == [sweep.FINISHED] * 2
  for name, pq in (('baseline', 50.0), ('no_update', 51.0)):
    with open(tmp_path / name / sweep.RESULT_FILE) as f:
      result = json.load(f)
    assert result['step'] == 600  # The last of results-300 and results-600.
    assert result['pq'] == pq
  with open(tmp_path / 'no_update' / sweep.RESULT_FILE) as f:
    assert json.load(f)['gin_param'] == ['C.steps=600', f'{UPDATE}=False']
  rows = _csv_rows(tmp_path)
  assert [(r['point'], r['PQ'], r['PQ^Th'], r['PQ^St'], r['SQ'], r['RQ'], r['status'])
          for r in rows] == [
      ('baseline', '50.00', '51.00', '49.00', '80.00', '60.00', 'finished'),
      ('no_update', '51.00', '52.00', '50.00', '80.00', '60.00', 'finished')]
  markdown = (tmp_path / sweep.MARKDOWN_FILE).read_text().splitlines()
  assert markdown[0].startswith('| point | PQ | PQ^Th | PQ^St | SQ | RQ | step |')
  assert markdown[3].startswith(
      f'| no_update | 51.00 | 52.00 | 50.00 | 80.00 | 60.00 | 600 | finished | {UPDATE}=False |')


def test_running_again_skips_finished_points(tmp_path):
  points = sweep.grid_points([f'{UPDATE}=[True,False]'])
  _run(points, tmp_path)
  outcomes = _run(points, tmp_path)
  assert all(o.skipped and o.status == sweep.FINISHED for o in outcomes)
  assert [_calls(tmp_path, p.name) for p in points] == [1, 1]
  assert len(_csv_rows(tmp_path)) == 2


def test_interrupted_point_resumes_in_its_model_dir(tmp_path):
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


def test_failing_point_is_reported_with_its_log(tmp_path):
  points = sweep.named_points(['fails:Fake.fail=True', 'works:'])
  outcomes = _run(points, tmp_path)
  assert [o.status for o in outcomes] == [sweep.FAILED, sweep.FINISHED]
  log_path = str(tmp_path / sweep.LOG_DIR / 'fails.log')
  assert outcomes[0].log_path == log_path
  with open(log_path) as f:
    assert 'fake training failed' in f.read()
  row = _csv_rows(tmp_path)[0]
  assert (row['point'], row['PQ'], row['status'], row['log']) == (
      'fails', '-', 'failed', log_path)
  assert f'| fails | - | - | - | - | - | - | failed |' in (
      tmp_path / sweep.MARKDOWN_FILE).read_text()


def test_point_without_eval_results_counts_as_failed(tmp_path):
  outcome, = _run(sweep.named_points(['silent:Fake.no_eval=True']), tmp_path)
  assert outcome.status == sweep.FAILED and outcome.results is None
  assert not (tmp_path / 'silent' / sweep.RESULT_FILE).exists()


@pytest.mark.slow
def test_one_point_with_the_real_train_cli(tfrecord_dir, tmp_path):
  common = ['build_model.num_clusters=8', 'OptimizerConfig.warmup_steps=1',
            f"ExperimentConfig.train_file_pattern='{tfrecord_dir}/train-*'",
            f"ExperimentConfig.eval_file_pattern='{tfrecord_dir}/val-*'",
            'ExperimentConfig.train_crop_size=(97, 97)',
            'ExperimentConfig.eval_crop_size=(97, 97)', 'ExperimentConfig.max_num_masks=12',
            'ExperimentConfig.train_batch_size=2', 'ExperimentConfig.eval_batch_size=2',
            'ExperimentConfig.train_steps=2', 'ExperimentConfig.steps_per_loop=1',
            'ExperimentConfig.eval_interval=2']
  points = sweep.named_points([f'no_update:{UPDATE}=False'])
  outcomes = sweep.run_sweep(points, str(tmp_path),
                             os.path.join(REPOSITORY, 'gin_configs/synthetic/demo.gin'),
                             common, report=lambda message: None)
  assert outcomes[0].status == sweep.FINISHED, open(outcomes[0].log_path).read()
  assert outcomes[0].results['step'] == 2
  operative = (tmp_path / 'no_update' / 'operative_config.gin').read_text()
  assert 'ClusteringTransformerLayer.update_pixels = False' in operative
