"""Bitwise-repeatable training (ExperimentConfig.deterministic).

Op determinism is process-wide, so every run is its own process
(`repeat_run.py`: the tiny model with drop path, 3 steps at 65x65, one
evaluation at the end).
"""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

SCRIPT = os.path.join(os.path.dirname(__file__), 'repeat_run.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3
# How many checkpoints were saved: differs when a preemption saved one more.
_SAVE_COUNTER = 'save_counter/.ATTRIBUTES/VARIABLE_VALUE'


def _start(tmp_path, name, records, model_dir=None, **flags):
  args = [sys.executable, SCRIPT, f'--records={records}',
          f'--model_dir={model_dir or tmp_path / name}', f'--steps={STEPS}'] + [
              f'--{k}={v}' for k, v in flags.items()]
  log = open(tmp_path / f'{name}.log', 'w')
  return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _wait(process, tmp_path, name, expected_code=0):
  code = process.wait(timeout=1800)
  assert code == expected_code, (tmp_path / f'{name}.log').read_text()[-3000:]


def _final_state(model_dir):
  """(every saved tensor of the last checkpoint, the eval results JSON)."""
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f'ckpt-{STEPS}'))
  tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name != '_CHECKPOINTABLE_OBJECT_GRAPH'}
  with open(os.path.join(model_dir, 'eval', f'results-{STEPS}.json')) as f:
    return tensors, json.load(f)


def _differing(a, b, ignore=()):
  """Names of the tensors that are not bitwise equal (or exist in one only)."""
  names = (a.keys() | b.keys()) - set(ignore)
  return sorted(n for n in names if n not in a or n not in b or a[n].dtype != b[n].dtype
                or a[n].tobytes() != b[n].tobytes())


def _assert_first_and_second_equal(tmp_path):
  """The runs 'first' and 'second' (same seed) ended bitwise equal; returns the
  first's final state and eval results."""
  first, first_results = _final_state(tmp_path / 'first')
  assert any(n.startswith('model/') for n in first) and 'global_step' in ' '.join(first)
  assert any('OPTIMIZER_SLOT' in n for n in first)
  second, second_results = _final_state(tmp_path / 'second')
  assert not _differing(first, second)
  assert second_results == first_results
  return first, first_results


def test_same_seed_repeats_bitwise(tfrecord_dir, tmp_path):
  processes = {name: _start(tmp_path, name, tfrecord_dir) for name in ('first', 'second')}
  for name, process in processes.items():
    _wait(process, tmp_path, name)
  _assert_first_and_second_equal(tmp_path)


@pytest.mark.slow  # Five training processes: about 6 minutes on 2 cores.
def test_same_seed_repeats_bitwise_across_a_preemption_other_seed_differs(
    tfrecord_dir, tmp_path):
  runs = {'first': {}, 'second': {}, 'other_seed': {'seed': 1},
          'preempted': {'sigterm_after_step': 1}}
  processes = {name: _start(tmp_path, name, tfrecord_dir, **flags)
               for name, flags in runs.items()}
  for name, process in processes.items():
    _wait(process, tmp_path, name, 143 if name == 'preempted' else 0)
  # The signal came after step 1: the run checkpointed step 2 and stopped.
  assert tf.train.latest_checkpoint(str(tmp_path / 'preempted')).endswith('ckpt-2')
  _wait(_start(tmp_path, 'resumed', tfrecord_dir, model_dir=tmp_path / 'preempted'),
        tmp_path, 'resumed')
  assert 'ckpt-2' in (tmp_path / 'resumed.log').read_text()

  first, first_results = _assert_first_and_second_equal(tmp_path)
  resumed, resumed_results = _final_state(tmp_path / 'preempted')
  assert not _differing(first, resumed, ignore=[_SAVE_COUNTER])
  assert resumed_results == first_results
  other, _ = _final_state(tmp_path / 'other_seed')
  differing = _differing(first, other)
  assert len(differing) > len(first) // 2, differing


@pytest.mark.slow
def test_in_graph_loop_repeats_the_python_loop_bitwise_across_a_preemption(
    tfrecord_dir, tmp_path):
  """ExperimentConfig.in_graph_loop: one tf.while_loop of all steps, or one per step
  with a SIGTERM after step 1, ends where the Python loop ends."""
  in_graph = {'in_graph_loop': True}
  runs = {'python': {}, 'one_loop': dict(in_graph, steps_per_loop=STEPS),
          'preempted': dict(in_graph, sigterm_after_step=1)}
  processes = {name: _start(tmp_path, name, tfrecord_dir, **flags)
               for name, flags in runs.items()}
  for name, process in processes.items():
    _wait(process, tmp_path, name, 143 if name == 'preempted' else 0)
  # The loop after the signal ran step 2, then the run checkpointed and stopped.
  assert tf.train.latest_checkpoint(str(tmp_path / 'preempted')).endswith('ckpt-2')
  _wait(_start(tmp_path, 'resumed', tfrecord_dir, model_dir=tmp_path / 'preempted',
               **in_graph), tmp_path, 'resumed')

  python, python_results = _final_state(tmp_path / 'python')
  one_loop, one_loop_results = _final_state(tmp_path / 'one_loop')
  assert not _differing(python, one_loop)
  assert one_loop_results == python_results
  assert list((tmp_path / 'one_loop' / 'train').glob('events.*'))  # Summaries.
  resumed, resumed_results = _final_state(tmp_path / 'preempted')
  assert not _differing(python, resumed, ignore=[_SAVE_COUNTER])
  assert resumed_results == python_results


def test_the_deterministic_flag_sets_the_gin_value(tfrecord_dir, tmp_path):
  """--deterministic binds ExperimentConfig.deterministic, which needs a seed."""
  result = subprocess.run(
      [sys.executable, '-m', 'cmt_deeplab_tf.train', '--mode=eval',
       f'--model_dir={tmp_path / "run"}', '--deterministic',
       "--gin_param=ExperimentConfig.dataset_name = 'synthetic'",
       f"--gin_param=ExperimentConfig.eval_file_pattern = '{tfrecord_dir}/val-*'"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode != 0
  assert 'ExperimentConfig.deterministic = True needs ExperimentConfig.seed' in result.stderr
