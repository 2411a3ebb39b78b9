"""Checkpoints survive kills during saves, corrupt files, full disks, concurrent readers."""
import logging
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import orbit
import pytest
import tensorflow as tf

from cmt_deeplab_tf.training import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _checkpoint(value=0.0, size=1000):
  step = tf.Variable(0, dtype=tf.int64)
  weights = tf.Variable(tf.fill([size], float(value)))
  return tf.train.Checkpoint(weights=weights, global_step=step), weights, step


def _save_steps(directory, steps, interval=1, **kwargs):
  """Saves a checkpoint at each of `steps` (weights = step); returns the manager."""
  checkpoint, weights, step = _checkpoint()
  manager = checkpointing.CheckpointManager(checkpoint, directory, max_to_keep=5,
                                            step_counter=step,
                                            checkpoint_interval=interval, **kwargs)
  manager.restore_or_initialize()
  for s in steps:
    step.assign(s)
    weights.assign(tf.fill(weights.shape, float(s)))
    manager.save(s)
  return manager


def _restored_weights(path):
  checkpoint, weights, _ = _checkpoint(-1.0)
  checkpoint.read(path).expect_partial().assert_existing_objects_matched()
  return weights.numpy()


def _data_file(prefix):
  return prefix + '.data-00000-of-00001'


def _flip(path, count=64):
  data = bytearray(open(path, 'rb').read())
  middle = len(data) // 2
  data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
  open(path, 'wb').write(bytes(data))


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', [_truncate, _flip], ids=['truncated', 'flipped'])
def test_bad_latest_is_moved_aside_and_the_newest_good_one_restored(tmp_path, caplog,
                                                                      damage):
  directory = str(tmp_path)
  _save_steps(directory, [1, 2, 3])
  damage(_data_file(os.path.join(directory, 'ckpt-3')))
  assert checkpointing.checkpoint_problem(os.path.join(directory, 'ckpt-3'))
  with caplog.at_level(logging.WARNING):
    good = checkpointing.recover_latest(directory)
  assert good == os.path.join(directory, 'ckpt-2')
  assert tf.train.latest_checkpoint(directory) == good
  assert f'Checkpoint {directory}/ckpt-3 is unusable' in caplog.text
  assert os.path.exists(_data_file(os.path.join(directory, 'corrupt', 'ckpt-3')))
  np.testing.assert_array_equal(_restored_weights(good), 2.0)
  # The run goes on: the next checkpoints follow the good one.
  manager = _save_steps(directory, [3, 4], restore_from=good)
  assert manager.latest_checkpoint.endswith('ckpt-4')
  np.testing.assert_array_equal(_restored_weights(manager.latest_checkpoint), 4.0)


def test_unreadable_state_file_and_interrupted_save_leftovers(tmp_path):
  directory = str(tmp_path)
  _save_steps(directory, [1, 2])
  with open(os.path.join(directory, 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: "ckpt-2')  # Cut short.
  os.makedirs(os.path.join(directory, 'ckpt-3_temp'))
  assert checkpointing.recover_latest(directory) == os.path.join(directory, 'ckpt-2')
  assert not os.path.exists(os.path.join(directory, 'ckpt-3_temp'))
  assert tf.train.latest_checkpoint(directory).endswith('ckpt-2')


def test_evaluation_finds_the_newest_good_one_without_touching_the_directory(tmp_path):
  directory = str(tmp_path)
  _save_steps(directory, [1, 2])
  os.remove(os.path.join(directory, 'ckpt-2.index'))
  before = sorted(os.listdir(directory))
  good, bad = checkpointing.newest_good_checkpoint(directory)
  assert good.endswith('ckpt-1') and [os.path.basename(p) for p, _ in bad] == ['ckpt-2']
  assert bad[0][1] == 'its index file is missing'
  assert sorted(os.listdir(directory)) == before


def test_failed_write_names_the_path_and_keeps_the_earlier_checkpoints(tmp_path,
                                                                        monkeypatch):
  directory = str(tmp_path)
  manager = _save_steps(directory, [1, 2])
  original = tf.train.Checkpoint._write  # pylint: disable=protected-access

  def disk_full(self, prefix, options=None):
    del options
    with open(_data_file(prefix), 'wb') as f:
      f.write(b'partial')
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
  monkeypatch.setattr(tf.train.Checkpoint, '_write', disk_full)
  manager.checkpoint.weights.assign(tf.fill([1000], 3.0))
  manager.checkpoint.global_step.assign(3)
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=f'Could not write checkpoint {directory}/ckpt-3: No space left '
                           'on device.*intact'):
    manager.save(3)
  assert not [f for f in os.listdir(directory) if f.startswith('ckpt-3')]
  assert tf.train.latest_checkpoint(directory).endswith('ckpt-2')
  for s in (1, 2):
    np.testing.assert_array_equal(
        _restored_weights(os.path.join(directory, f'ckpt-{s}')), float(s))
  monkeypatch.setattr(tf.train.Checkpoint, '_write', original)
  assert manager.save(3).endswith('ckpt-3')  # Space again: the same step saves.


def _saved_steps(directory):
  return sorted(int(p.split('-')[-1][:-len('.index')])
                for p in tf.io.gfile.glob(os.path.join(directory, 'ckpt-*.index')))


def test_saves_at_multiples_of_the_interval_and_when_forced(tmp_path):
  directory = str(tmp_path / 'fresh')
  manager = _save_steps(directory, range(50, 801, 50), interval=250)
  manager.save(820, check_interval=False)
  assert _saved_steps(directory) == [250, 500, 750, 820]
  # Resumed after a checkpoint off the grid (e.g. preemption at 260): the next
  # ones still land on multiples.
  resumed = str(tmp_path / 'resumed')
  manager = _save_steps(resumed, [260], interval=250, )
  assert _saved_steps(resumed) == [260]
  _save_steps(resumed, range(300, 801, 50), interval=250)
  assert _saved_steps(resumed) == [260, 500, 750]


class _Probe(orbit.AbstractEvaluator):
  """Records the restored weights at every evaluation."""

  def __init__(self, weights):
    self.weights = weights
    self.seen = []

  def evaluate(self, num_steps):
    del num_steps
    self.seen.append(self.weights.numpy().copy())
    return {}


def test_continuous_evaluation_waits_for_a_checkpoint_being_written(tmp_path):
  """A writer that announces each checkpoint before its data file is complete (as a
  file system without atomic renames could): every evaluated checkpoint is whole."""
  directory, staging = str(tmp_path / 'run'), str(tmp_path / 'staging')
  os.makedirs(directory)
  size, steps = 200_000, 4

  def writer():
    checkpoint, weights, step = _checkpoint(size=size)
    for s in range(1, steps + 1):
      weights.assign(tf.fill([size], float(s)))
      step.assign(s)
      path = checkpoint.write(os.path.join(staging, f'ckpt-{s}'))
      target = os.path.join(directory, f'ckpt-{s}')
      with open(path + '.index', 'rb') as f:
        index = f.read()
      with open(target + '.index', 'wb') as f:
        f.write(index)
      tf.compat.v1.train.update_checkpoint_state(directory, target)  # Announced too early.
      data = open(_data_file(path), 'rb').read()
      with open(_data_file(target), 'wb') as f:
        f.write(data[:len(data) // 2])
        f.flush()
        time.sleep(0.6)
        f.write(data[len(data) // 2:])
      time.sleep(0.3)

  checkpoint, weights, step = _checkpoint(-1.0, size=size)
  probe = _Probe(weights)
  manager = checkpointing.CheckpointManager(checkpoint, directory, max_to_keep=None,
                                            partial_restore=True)
  controller = checkpointing.Controller(evaluator=probe, global_step=step,
                                        checkpoint_manager=manager, read_retries=20,
                                        retry_seconds=0.1)
  thread = threading.Thread(target=writer)
  thread.start()
  controller.evaluate_continuously(timeout=2, timeout_fn=lambda: not thread.is_alive())
  thread.join()
  assert probe.seen, 'nothing was evaluated'
  for weights_seen in probe.seen:  # Each one whole: one value throughout.
    assert weights_seen.min() == weights_seen.max() >= 1
  assert probe.seen[-1][0] == steps


def _kill_during_saves(directory, kills, seed):
  """Starts the checkpoint writer `kills` times, SIGKILLs it at a random moment
  after its first save; returns the step each run resumed from."""
  rng = random.Random(seed)
  resumed = []
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  for _ in range(kills):
    process = subprocess.Popen(
        [sys.executable, '-m', 'tests.training.checkpoint_writer',
         f'--directory={directory}'], stdout=subprocess.PIPE, text=True, env=env,
        cwd=ROOT)
    line = process.stdout.readline()
    assert line.startswith('resumed'), line
    resumed.append(int(line.split()[1]))
    assert process.stdout.readline().startswith('saved')
    time.sleep(rng.uniform(0.0, 1.0))
    process.kill()
    process.wait()
  return resumed


def _check_restorable(directory, kills, resumed):
  latest = checkpointing.recover_latest(directory)
  assert latest is not None
  reader = tf.train.load_checkpoint(latest)
  step = reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')
  for name in reader.get_variable_to_shape_map():
    if name.startswith('model/'):
      np.testing.assert_array_equal(reader.get_tensor(name), step, err_msg=name)
  # Every restart resumed from a checkpoint at least as new as the last one seen.
  assert resumed[0] == 0 and all(b > a for a, b in zip(resumed, resumed[1:]))
  assert step >= resumed[-1] and len(resumed) == kills


def test_sigkill_during_saves_leaves_a_restorable_checkpoint(tmp_path):
  resumed = _kill_during_saves(str(tmp_path), kills=3, seed=0)
  _check_restorable(str(tmp_path), 3, resumed)


@pytest.mark.slow
def test_many_sigkills_during_saves(tmp_path):
  resumed = _kill_during_saves(str(tmp_path), kills=20, seed=1)
  _check_restorable(str(tmp_path), 20, resumed)
