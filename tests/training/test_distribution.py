"""Distribution tests on CPU: MirroredStrategy, MultiWorkerMirroredStrategy, resume.

Each run is a separate process (`distributed_run.py`), since logical devices and
TF_CONFIG must be set before TensorFlow starts.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import task as task_lib
from tests.training import distributed_run

SCRIPT = os.path.join(os.path.dirname(__file__), 'distributed_run.py')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Same global batch, same data, same initial weights: the replicas' gradient sum and
# synchronized batch norm reproduce the single device up to float32 summation order.
PARAMETER_ATOL = 1e-4


@pytest.fixture(scope='module')
def init_checkpoint(tmp_path_factory):
  """One set of initial weights for every run (processes would draw different ones)."""
  gin.clear_config()
  distributed_run.configure_tiny_run()
  model = builder.build_model(num_classes=8)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  path = tf.train.Checkpoint(model=model).write(
      str(tmp_path_factory.mktemp('init') / 'init'))
  gin.clear_config()
  return path


def _start(tmp_path, name, strategy, records, init, env=None, **flags):
  args = [sys.executable, SCRIPT, f'--strategy={strategy}', f'--records={records}',
          f'--model_dir={tmp_path / name}', f'--weights={tmp_path / name}.npz',
          f'--init_checkpoint={init}'] + [f'--{k}={v}' for k, v in flags.items()]
  log = open(tmp_path / f'{name}.log', 'w')
  return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env or {})))


def _finish(process, tmp_path, name, timeout=900):
  code = process.wait(timeout=timeout)
  log = (tmp_path / f'{name}.log').read_text()
  assert code == 0, log[-3000:]
  # Multi-worker runs may log coordination-service messages after the summary.
  summary = json.loads(next(line for line in reversed(log.splitlines())
                            if line.startswith('{"step"')))
  return summary, np.load(tmp_path / f'{name}.npz')


def _assert_same_parameters(a, b, atol):
  assert sorted(a.files) == sorted(b.files)
  worst = max(np.abs(a[k] - b[k]).max() for k in a.files)
  assert worst <= atol, f'largest parameter difference {worst:.3g} > {atol}'


@pytest.mark.slow  # ~5 min on 2 cores; the loss under MirroredStrategy stays default.
def test_mirrored_two_replicas_match_one_device(tfrecord_dir, init_checkpoint, tmp_path):
  one = _start(tmp_path, 'one', 'one_device', tfrecord_dir, init_checkpoint)
  two = _start(tmp_path, 'two', 'mirrored', tfrecord_dir, init_checkpoint)
  (one_summary, one_weights), (two_summary, two_weights) = (
      _finish(one, tmp_path, 'one'), _finish(two, tmp_path, 'two'))
  assert one_summary == {'step': 3, 'replicas': 1}
  assert two_summary == {'step': 3, 'replicas': 2}
  _assert_same_parameters(one_weights, two_weights, PARAMETER_ATOL)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_workers_agree(tfrecord_dir, init_checkpoint, tmp_path):
  ports = _free_ports(2)
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  workers = [
      _start(tmp_path, f'worker{i}', 'multi_worker_mirrored', tfrecord_dir, init_checkpoint,
             env={'TF_CONFIG': json.dumps({'cluster': cluster,
                                           'task': {'type': 'worker', 'index': i}})})
      for i in range(2)]
  results = [_finish(w, tmp_path, f'worker{i}') for i, w in enumerate(workers)]
  for summary, _ in results:
    assert summary == {'step': 3, 'replicas': 2}
  _assert_same_parameters(results[0][1], results[1][1], atol=0.0)


def _latest_step(model_dir) -> int:
  path = tf.train.latest_checkpoint(str(model_dir))
  return int(path.rsplit('-', 1)[1]) if path else 0


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tfrecord_dir, init_checkpoint, tmp_path):
  model_dir, steps = tmp_path / 'run', 20
  run = _start(tmp_path, 'run', 'one_device', tfrecord_dir, init_checkpoint, steps=steps,
               checkpoint_interval=2)
  deadline = time.time() + 900
  while _latest_step(model_dir) < 4:
    assert run.poll() is None and time.time() < deadline, 'ended before a checkpoint'
    time.sleep(0.1)
  run.send_signal(signal.SIGKILL)
  run.wait()
  killed_at = _latest_step(model_dir)
  assert 4 <= killed_at < steps, 'the kill must land mid-run'
  saved_step = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir))).get_tensor(
      'global_step/.ATTRIBUTES/VARIABLE_VALUE')  # Read now: the resumed run prunes old ones.
  resumed = _start(tmp_path, 'run', 'one_device', tfrecord_dir, init_checkpoint,
                   steps=steps, checkpoint_interval=2)
  summary, _ = _finish(resumed, tmp_path, 'run')
  assert summary['step'] == steps and _latest_step(model_dir) == steps
  log = (tmp_path / 'run.log').read_text()
  assert f'ckpt-{killed_at}' in log and 'restor' in log.lower()
  assert saved_step == killed_at


def _trained_steps(log: str):
  """The global steps the Orbit log reports after each train loop, in order."""
  return [int(s) for s in re.findall(r'train \| step:\s+(\d+) \| steps/sec', log)]


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_the_restart_loses_nothing(
    tfrecord_dir, init_checkpoint, tmp_path):
  steps = 8
  full = _start(tmp_path, 'full', 'one_device', tfrecord_dir, init_checkpoint, steps=steps)
  full_summary, full_weights = _finish(full, tmp_path, 'full')
  assert full_summary['step'] == steps
  # No periodic checkpoint before the end: only the SIGTERM can write one mid-run.
  run = _start(tmp_path, 'run', 'one_device', tfrecord_dir, init_checkpoint, steps=steps,
               checkpoint_interval=100)
  deadline = time.time() + 900
  while not [s for s in _trained_steps((tmp_path / 'run.log').read_text()) if s >= 3]:
    assert run.poll() is None and time.time() < deadline, 'ended before step 3'
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  assert run.wait(timeout=600) == 143  # Exited by itself, as a preempted job.
  log = (tmp_path / 'run.log').read_text()
  stopped = int(re.search(r'Preempted at step (\d+)', log).group(1))
  assert 3 <= stopped < steps and _latest_step(tmp_path / 'run') == stopped
  resumed = _start(tmp_path, 'resumed', 'one_device', tfrecord_dir, init_checkpoint,
                   steps=steps, checkpoint_interval=100, model_dir=tmp_path / 'run')
  summary, weights = _finish(resumed, tmp_path, 'resumed')
  resumed_log = (tmp_path / 'resumed.log').read_text()
  assert f'ckpt-{stopped}' in resumed_log
  # The first step trained after the restart is the one after the signal.
  assert _trained_steps(resumed_log)[0] == stopped + 1
  assert summary['step'] == steps
  # Same data (skipped to the step), same optimizer state: the uninterrupted weights.
  _assert_same_parameters(full_weights, weights, atol=1e-6)
