"""Preemption: SIGTERM makes training checkpoint at the current step and exit.

TPU VMs, GCE and Kubernetes send SIGTERM some seconds before they stop a
machine. `SigtermWatcher` turns the signal into a flag; the trainer checks it
after every step (with `ExperimentConfig.in_graph_loop`, after every loop of
`steps_per_loop` steps, which run in one graph: the signal is honoured at the
end of the current loop, so keep such loops shorter than the grace period), all
workers agree on it (an all-reduce, so that they stop at the same step), and
`run_until_preempted` saves a checkpoint at that step and raises `Preempted`, a
`SystemExit` with status 143 (128 + SIGTERM), so that a job supervisor restarts
the job. The restarted run restores that checkpoint and continues with the next
step; with a seeded, deterministic input pipeline it also skips the batches
already trained on (`pipeline.panoptic_dataset`'s `skip_batches`), so nothing is
lost and nothing repeated.

TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` (and
Orbit's `SaveCheckpointIfPreempted` action built on it) checks at the end of
each Orbit train loop (`steps_per_loop` steps) and needs a cluster resolver;
this checks at every step (Python loop) under any strategy.
"""
import signal
import threading
from typing import Callable

from absl import logging
import tensorflow as tf

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(SystemExit):
  """Training stopped after a SIGTERM, with a checkpoint at `step`."""

  def __init__(self, step: int):
    super().__init__(EXIT_CODE)
    self.step = step

  def __str__(self):
    return f'Preempted at step {self.step} (checkpoint saved).'


class SigtermWatcher:
  """Context manager: records SIGTERM instead of dying; restores the old handler.

  Signal handlers can only be installed from the main thread; elsewhere the
  watcher never fires (and says so).
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    self._installed = False

  def requested(self) -> bool:
    return self._event.is_set()

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: checkpointing after the current step (in-graph '
                    'loop: the current loop), then exiting.')
    self._event.set()

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    else:
      logging.warning('Not in the main thread: SIGTERM will not checkpoint.')
    return self

  def __exit__(self, *exc_info):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def run_until_preempted(trainer, manager: tf.train.CheckpointManager,
                        train_fn: Callable, *args):
  """Runs `train_fn(*args)`; on SIGTERM checkpoints the current step and exits.

  Args:
    trainer: polls its `stop_requested()` after every step or in-graph loop
      (`PanopticTrainer`).
    manager: saves the checkpoint of the step training stopped at.
    train_fn: e.g. `Controller.train`, with its `args`.

  Raises:
    Preempted: after the checkpoint of the step training stopped at.
  """
  with SigtermWatcher() as watcher:
    trainer.stop_requested = watcher.requested
    try:
      return train_fn(*args)
    except Preempted as stopped:
      path = manager.save(checkpoint_number=stopped.step, check_interval=False)
      logging.warning('Preempted at step %d: saved %s; a restart resumes from it.',
                      stopped.step, path)
      raise
    finally:
      trainer.stop_requested = lambda: False
