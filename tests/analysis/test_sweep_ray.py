"""The sweep's runs as Ray tasks on a local instance (fake train processes)."""
import glob
import os
import sys
import tempfile
import time

import pytest
import ray

from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_runner

FAKE_TRAIN = (sys.executable, os.path.join(os.path.dirname(__file__), 'fake_train.py'))


def _ray_processes(marker):
  """Command lines of the live processes that mention `marker`."""
  found = []
  for path in glob.glob('/proc/[0-9]*/cmdline'):
    try:
      with open(path, 'rb') as f:
        command = f.read().replace(b'\0', b' ').decode(errors='replace')
    except OSError:
      continue
    if marker in command and str(os.getpid()) != path.split('/')[2]:
      found.append(command)
  return found


@pytest.fixture
def ray_tmpdir(monkeypatch):
  """A short RAY_TMPDIR of this test: its Ray processes carry it on the command line."""
  directory = tempfile.mkdtemp(prefix='ray', dir='/tmp')
  monkeypatch.setenv('RAY_TMPDIR', directory)
  yield directory
  deadline = time.time() + 20
  while _ray_processes(directory) and time.time() < deadline:
    time.sleep(0.5)
  leaked = _ray_processes(directory)
  assert not leaked, leaked


def test_two_runs_at_once_with_retries_and_a_lost_worker(tmp_path, ray_tmpdir):
  points = sweep.named_points(['a:Fake.sleep=8', 'b:Fake.sleep=3;Fake.crash_once=True',
                               'lost:Fake.kill_parent=True'])
  settings = sweep.Settings(str(tmp_path), 'base.gin', command_prefix=FAKE_TRAIN)
  runner = sweep_runner.RayRunner(num_cpus=2, cpus_per_run=1)
  start = time.time()
  outcomes = sweep_runner.run_sweep(points, settings, seeds=[0], runner=runner,
                                    max_retries=1, report=lambda message: None)
  print(f'Ray sweep of 3 runs took {time.time() - start:.1f} s')
  assert not ray.is_initialized()
  a, b, lost = outcomes
  assert (a.status, a.attempts, b.status, b.attempts) == ('finished', 1, 'finished', 2)
  assert b.results['resumed_from'] == 300
  # Both ran at the same time, each with one intra-op thread ('a' outlasts the
  # scheduling of b's retry by seconds even on a loaded machine).
  assert max(a.results['started'], b.results['started']) < min(
      a.results['ended'], b.results['ended'])
  assert a.results['threads'] == b.results['threads'] == '1'
  assert (lost.status, lost.attempts) == ('failed', 2)
  log = open(lost.log_path).read()
  assert log.count('$ ') == 2 and log.count('Ray task failed') == 2
  assert os.path.exists(tmp_path / 'results.md')
