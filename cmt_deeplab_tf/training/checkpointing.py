"""Checkpoints that survive interrupted saves, bad files and full disks.

TensorFlow writes a checkpoint `ckpt-<step>` as its data and index files (via a
`ckpt-<step>_temp` folder and a rename), then rewrites the `checkpoint` state
file that names the latest. A process killed during a save, a file truncated by
a failing disk or copied incompletely can still leave a latest checkpoint that
does not restore. Here:

- `recover_latest` (training, at start) reads every tensor of the checkpoints,
  newest first (each tensor is checked against the CRC32C stored in the index),
  moves each bad one into `<dir>/corrupt/` with a warning naming it and the
  reason, rewrites the state file to name the newest good one and removes the
  leftovers of interrupted saves; the run resumes from that checkpoint;
- `newest_good_checkpoint` (evaluation) finds the same without changing the
  directory, which a trainer may be writing;
- `CheckpointManager.save` saves at every multiple of the interval (and when
  forced, e.g. at the last step); a failed write (e.g. a full disk) removes
  its partial files and raises `CheckpointWriteError` naming the path; the
  earlier checkpoints and the state file are untouched;
- `Controller` restores only what its checkpoint object tracks without
  warnings about the rest (evaluation restores the model, not the optimizer
  slots), evaluates continuously only checkpoints that read back completely,
  and logs Orbit's progress lines once.
"""
import os
import re
import time
from typing import Callable, List, Optional, Tuple

from absl import logging
from google.protobuf import text_format
import orbit
from orbit import controller as orbit_controller
import tensorflow as tf

from cmt_deeplab_tf import cli

STATE_FILE = 'checkpoint'
CORRUPT_DIR = 'corrupt'
_PREFIX = re.compile(r'^ckpt-(\d+)$')


class CheckpointWriteError(cli.UserError):
  """A checkpoint could not be written (e.g. the disk is full)."""


def checkpoint_problem(prefix: str) -> Optional[str]:
  """Why the checkpoint `prefix` cannot be restored, or None if every tensor reads."""
  if not tf.io.gfile.exists(prefix + '.index'):
    return 'its index file is missing'
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_dtype_map():
      reader.get_tensor(name)
  # The reader turns TensorFlow's status codes into assorted Python errors
  # (IndexError for a short read, ValueError, tf.errors.*): any means unusable.
  except Exception as e:  # pylint: disable=broad-except
    return cli.one_line(getattr(e, 'message', e))[:300]
  return None


def _step(prefix: str) -> int:
  match = _PREFIX.match(os.path.basename(prefix))
  return int(match.group(1)) if match else -1


def _read_state(directory: str):
  """The `checkpoint` state proto, or None if absent or unreadable (with a warning)."""
  path = os.path.join(directory, STATE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    return tf.train.get_checkpoint_state(directory)
  except (text_format.ParseError, tf.errors.OpError) as e:
    logging.warning('The checkpoint state file %s is unreadable (%s); using the '
                    'checkpoint files found beside it.', path, e)
    return None


def _candidates(directory: str) -> List[str]:
  """Checkpoint prefixes in `directory`, newest first: those with an index file
  and those the state file names (which may lack files)."""
  prefixes = {p[:-len('.index')] for p in tf.io.gfile.glob(
      os.path.join(directory, 'ckpt-*.index'))}
  state = _read_state(directory)
  if state is not None:
    prefixes.update(os.path.join(directory, os.path.basename(p))
                    for p in state.all_model_checkpoint_paths)
  return sorted((p for p in prefixes if _step(p) >= 0), key=_step, reverse=True)


def newest_good_checkpoint(directory: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
  """The newest checkpoint of `directory` that reads completely.

  Returns:
    (its prefix or None, [(prefix, problem)] of the newer bad ones).
  """
  bad = []
  for prefix in _candidates(directory):
    problem = checkpoint_problem(prefix)
    if problem is None:
      return prefix, bad
    bad.append((prefix, problem))
  return None, bad


def recover_latest(directory: str) -> Optional[str]:
  """Makes the newest good checkpoint the latest one of `directory` (training).

  Bad newer checkpoints are moved to `<directory>/corrupt/` with a warning, the
  state file is rewritten, and the temporary files of interrupted saves are
  removed. Returns the newest good checkpoint, or None.
  """
  if not tf.io.gfile.isdir(directory):
    return None
  for leftover in tf.io.gfile.glob(os.path.join(directory, 'ckpt-*_temp*')):
    logging.warning('Removing %s, left by an interrupted checkpoint save.', leftover)
    _remove(leftover)
  good, bad = newest_good_checkpoint(directory)
  for prefix, problem in bad:
    target = os.path.join(directory, CORRUPT_DIR)
    tf.io.gfile.makedirs(target)
    for path in tf.io.gfile.glob(prefix + '.*'):
      tf.io.gfile.rename(path, os.path.join(target, os.path.basename(path)),
                         overwrite=True)
    logging.warning('Checkpoint %s is unusable (%s): moved to %s; resuming from %s.',
                    prefix, problem, target, good or 'scratch')
  state = _read_state(directory)
  if bad or good != (state and os.path.join(
      directory, os.path.basename(state.model_checkpoint_path))):
    kept = [p for p in reversed(_candidates(directory))
            if _step(p) <= _step(good or '') and tf.io.gfile.exists(p + '.index')]
    if good:
      tf.compat.v1.train.update_checkpoint_state(directory, good, all_model_checkpoint_paths=kept)
    elif tf.io.gfile.exists(os.path.join(directory, STATE_FILE)):
      tf.io.gfile.remove(os.path.join(directory, STATE_FILE))
  return good


def checkpoint_step(directory: str) -> int:
  """The global step of the latest checkpoint in `directory` (0 if none)."""
  path = tf.train.latest_checkpoint(directory)
  if not path:
    return 0
  return int(tf.train.load_checkpoint(path).get_tensor(
      'global_step/.ATTRIBUTES/VARIABLE_VALUE'))


def check_checkpoint_matches(checkpoint: tf.train.Checkpoint, path: str) -> None:
  """Restores `path`, failing clearly if it was written by another architecture."""
  try:
    checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
    raise ValueError(
        f'Checkpoint {path} does not match the configured model (was it written by '
        f'another architecture or class count?): {str(e)[:500]}') from e


def _remove(path: str) -> None:
  if tf.io.gfile.isdir(path):
    tf.io.gfile.rmtree(path)
  elif tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


class CheckpointManager(tf.train.CheckpointManager):
  """`tf.train.CheckpointManager` saving at multiples of `checkpoint_interval`,
  reporting a failed write by path, and restoring a chosen checkpoint.

  Args:
    restore_from: the checkpoint `restore_or_initialize` restores (default: the
      latest), e.g. the newest good one.
    partial_restore: the checkpoint object tracks part of what was saved (the
      model, for evaluation): restore it without warnings about the rest.
  """

  def __init__(self, *args, restore_from: Optional[str] = None,
               partial_restore: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    self._restore_from = restore_from
    self._partial_restore = partial_restore

  def save(self, checkpoint_number=None, check_interval=True, options=None):
    step = int(checkpoint_number if checkpoint_number is not None
               else self._step_counter.numpy())
    last = self._last_checkpoint_step
    interval = self._checkpoint_interval
    if interval and check_interval and step // interval <= (last or 0) // interval:
      return None
    prefix = f'{self._prefix}-{step}'
    try:
      return super().save(step, check_interval=False, options=options)
    except (tf.errors.OpError, OSError) as e:
      for path in tf.io.gfile.glob(prefix + '.*') + tf.io.gfile.glob(prefix + '_temp*'):
        _remove(path)
      self._last_checkpoint_step = last
      raise CheckpointWriteError(
          f'Could not write checkpoint {prefix}: '
          f'{cli.one_line(getattr(e, "message", e))}. The earlier checkpoints are '
          f'intact (latest: {self.latest_checkpoint}).') from e

  def restore_or_initialize(self):
    path = self._restore_from or self.latest_checkpoint
    if path is None:
      return super().restore_or_initialize()
    status = self.checkpoint.restore(path)
    if self._partial_restore:
      status.expect_partial()
    if self._checkpoint_interval is not None:
      self._last_checkpoint_step = int(self._step_counter.numpy())
    return path


class Controller(orbit.Controller):
  """`orbit.Controller` that logs its progress once and restores safely.

  Orbit's progress lines go both to the absl log and to stdout, so a terminal
  shows each twice; here they go to the log only. Continuous evaluation skips a
  checkpoint that does not read back completely within `read_retries` tries
  `retry_seconds` apart (e.g. still being written on a file system without
  atomic renames, or deleted by the trainer's `max_to_keep`).
  """

  def __init__(self, *args, read_retries: int = 3, retry_seconds: float = 2.0,
               **kwargs):
    orbit_controller._log = logging.info  # pylint: disable=protected-access
    self._read_retries = read_retries
    self._retry_seconds = retry_seconds
    super().__init__(*args, **kwargs)

  def restore_checkpoint(self, checkpoint_path: Optional[str] = None):
    if checkpoint_path is None:
      return super().restore_checkpoint()
    with self.strategy.scope():
      self.checkpoint_manager.checkpoint.restore(checkpoint_path).expect_partial()
    logging.info('restored model from %s.', checkpoint_path)
    return checkpoint_path

  def _readable(self, checkpoint_path: str) -> bool:
    for attempt in range(self._read_retries):
      problem = checkpoint_problem(checkpoint_path)
      if problem is None:
        return True
      if attempt + 1 < self._read_retries:
        time.sleep(self._retry_seconds)
    logging.warning('Skipping checkpoint %s: %s.', checkpoint_path, problem)
    return False

  def evaluate_continuously(self, steps: int = -1, timeout=None, timeout_fn=None,
                            already_evaluated: Callable[[], bool] = lambda: False,
                            finished: Callable[[], bool] = lambda: False):
    """Evaluates each new complete checkpoint.

    After each restore, `already_evaluated()` says to skip its evaluation and
    `finished()` to stop.
    """
    output = None
    logging.info('Evaluating each new checkpoint of %s.', self.checkpoint_manager.directory)
    for checkpoint_path in tf.train.checkpoints_iterator(
        self.checkpoint_manager.directory, timeout=timeout, timeout_fn=timeout_fn):
      if not self._readable(checkpoint_path):
        continue
      try:
        self.restore_checkpoint(checkpoint_path)
      except tf.errors.OpError as e:  # Deleted since it was read (max_to_keep).
        logging.warning('Skipping checkpoint %s: %s', checkpoint_path, e.message)
        continue
      if already_evaluated():
        logging.info('%s was evaluated before: not evaluated again.', checkpoint_path)
      else:
        output = self.evaluate(steps)
      if finished():
        break
    return output
