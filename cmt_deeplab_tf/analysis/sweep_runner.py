"""Runs a sweep's runs on an engine, retries failures, collects results and tables.

The driver (`run_sweep`) skips runs that finished before (their
`sweep_result.json`), hands the others to a runner, and as each train process
ends reads the run's eval results, retries a failed run up to `max_retries`
times, and rewrites the tables (`sweep_report`). Runners:

- `LocalRunner`: one run after the other in this machine's processes.
- `RayRunner`: every run is a Ray task (Ray core) that starts the train CLI as a
  subprocess (each run keeps its own process), declaring `num_cpus` / `num_gpus`.
  Without an address it starts a local Ray instance for the sweep's duration
  (no set-up; shut down at the end, with the train processes it started); with
  one it joins that cluster, whose nodes must see the sweep dir, the base gin file
  and the data at the same paths (a shared file system). A task that Ray loses
  (a worker or node dies) counts as a failed attempt.

The train process of a task gets TF_NUM_INTRAOP_THREADS = the task's CPUs (unless
set), so that concurrent runs do not each take every core.
"""
import json
import logging
import os
from typing import Callable, List, Optional, Sequence

from cmt_deeplab_tf.analysis import paper_tables
from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_report

RUNNERS = ('ray', 'local')


class LocalRunner:
  """Runs each submitted run when it is collected, one at a time, here."""

  def __init__(self):
    self._next_handle = 0
    self._jobs = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._jobs.clear()

  def submit(self, run: sweep.Run, settings: sweep.Settings) -> int:
    self._next_handle += 1
    self._jobs[self._next_handle] = (run, settings)
    return self._next_handle

  def next_finished(self, handles: Sequence[int]):
    """(handle, exit code or error message) of the first of `handles`."""
    handle = handles[0]
    return handle, sweep.launch(*self._jobs.pop(handle))


class RayRunner:
  """Runs each submitted run as a Ray task; see the module docstring.

  Args:
    address: a Ray cluster to join; None: start a local instance.
    num_cpus: CPUs of the local instance; None: all of this machine's.
    cpus_per_run: CPUs each task declares.
    gpus_per_run: GPUs each task declares (Ray sets CUDA_VISIBLE_DEVICES).
  """

  def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None,
               cpus_per_run: float = 1.0, gpus_per_run: float = 0.0):
    self._address = address
    self._num_cpus = num_cpus
    self._cpus, self._gpus = cpus_per_run, gpus_per_run
    self._started = False
    self._task = None

  def __enter__(self):
    os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
    import ray  # pylint: disable=g-import-not-at-top  (only this runner needs Ray)
    if not ray.is_initialized():
      ray.init(address=self._address,
               num_cpus=None if self._address else self._num_cpus,
               include_dashboard=False, logging_level=logging.ERROR,
               log_to_driver=False)
      self._started = True
    self._task = ray.remote(sweep.launch).options(
        num_cpus=self._cpus, num_gpus=self._gpus, max_retries=0)
    return self

  def __exit__(self, *exc_info):
    if self._started:
      import ray  # pylint: disable=g-import-not-at-top
      ray.shutdown()
      self._started = False

  def submit(self, run: sweep.Run, settings: sweep.Settings):
    return self._task.remote(run, settings, max(1, int(self._cpus)))

  def next_finished(self, handles: Sequence[object]):
    """(handle, exit code or error message) of the first of `handles` to end."""
    import ray  # pylint: disable=g-import-not-at-top
    (handle,), _ = ray.wait(list(handles), num_returns=1)
    try:
      return handle, ray.get(handle)
    except ray.exceptions.RayError as e:
      return handle, f'Ray task failed: {e}'


def finished_before(run: sweep.Run, sweep_dir: str) -> Optional[sweep.Outcome]:
  """The run's outcome if an earlier sweep finished it, else None."""
  path = os.path.join(run.model_dir(sweep_dir), sweep.RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return sweep.Outcome(run, sweep.FINISHED, json.load(f), run.log_path(sweep_dir),
                         attempts=0)


def collect(run: sweep.Run, sweep_dir: str, exit_status, attempts: int) -> sweep.Outcome:
  """The outcome of a train process: finished if it exited 0 and left results.

  Args:
    run: the run.
    sweep_dir: the sweep dir.
    exit_status: the process's exit code, or the engine's error message.
    attempts: train processes started for the run so far.
  """
  model_dir, log_path = run.model_dir(sweep_dir), run.log_path(sweep_dir)
  if isinstance(exit_status, str):
    with open(log_path, 'a') as log:
      log.write(exit_status + '\n')
  try:
    results = paper_tables.load_results(
        model_dir, [key for key, _ in sweep_report.METRICS], f'sweep run {run.name}')
  except ValueError:
    results = None
  if exit_status != 0 or results is None:
    return sweep.Outcome(run, sweep.FAILED, results, log_path, attempts)
  with open(os.path.join(model_dir, sweep.RESULT_FILE), 'w') as f:
    json.dump(results, f, indent=2)
  return sweep.Outcome(run, sweep.FINISHED, results, log_path, attempts)


def describe(outcome: sweep.Outcome) -> str:
  """One line on a run's outcome for the progress report."""
  if outcome.status == sweep.FAILED:
    return (f'{outcome.run.name}: FAILED after {outcome.attempts} attempt'
            f'{"s" * (outcome.attempts != 1)}, see {outcome.log_path}')
  results = outcome.results
  when = 'finished before' if not outcome.attempts else 'finished'
  interval = (f' [{results["pq_ci_low"]:.2f}, {results["pq_ci_high"]:.2f}]'
              if 'pq_ci_low' in results else '')
  return f'{outcome.run.name}: {when}, PQ {results["pq"]:.2f}{interval}'


def run_sweep(points: Sequence[sweep.Point], settings: sweep.Settings,
              seeds: Sequence[int] = (), runner=None, max_retries: int = 0,
              baseline: Optional[str] = None,
              report: Callable[[str], None] = print) -> List[sweep.Outcome]:
  """Runs every (point, seed) not finished before, then writes the tables.

  Args:
    points: the sweep's points.
    settings: how each run calls the train CLI.
    seeds: the seeds of every point; none: one run with the config's seed.
    runner: `LocalRunner` (default) or `RayRunner`.
    max_retries: times a failed run is started again.
    baseline: the point the others are compared with, or None.
    report: receives progress lines.

  Returns:
    The outcomes, in the order of `sweep.runs(points, seeds)`.

  Raises:
    ValueError: on a baseline that is not a point, or bad seeds.
  """
  sweep.check_baseline(points, baseline)
  all_runs = sweep.runs(points, seeds)
  os.makedirs(settings.sweep_dir, exist_ok=True)
  outcomes = {}
  for run in all_runs:
    outcome = finished_before(run, settings.sweep_dir)
    if outcome:
      outcomes[run] = outcome
      report(describe(outcome))

  def record(outcome):
    outcomes[outcome.run] = outcome
    report(describe(outcome))
    done = [outcomes[run] for run in all_runs if run in outcomes]
    sweep_report.write(points, done, settings.sweep_dir, baseline)

  todo = [run for run in all_runs if run not in outcomes]
  report(f'{len(todo)} of {len(all_runs)} runs to do, '
         f'{len(all_runs) - len(todo)} finished before.')
  if todo:
    with runner or LocalRunner() as engine:
      _execute(todo, settings, engine, max_retries, record, report)
  sweep_report.write(points, [outcomes[run] for run in all_runs], settings.sweep_dir,
                     baseline)
  return [outcomes[run] for run in all_runs]


def _execute(todo: Sequence[sweep.Run], settings: sweep.Settings, engine,
             max_retries: int, record: Callable[[sweep.Outcome], None],
             report: Callable[[str], None]) -> None:
  """Runs `todo` on `engine`, restarting failed runs; `record`s each final outcome."""
  attempts = {}
  pending = {engine.submit(run, settings): run for run in todo}
  while pending:
    handle, exit_status = engine.next_finished(list(pending))
    run = pending.pop(handle)
    attempts[run] = attempts.get(run, 0) + 1
    outcome = collect(run, settings.sweep_dir, exit_status, attempts[run])
    if outcome.status == sweep.FAILED and attempts[run] <= max_retries:
      report(f'{run.name}: failed (attempt {attempts[run]}), retrying; '
             f'see {outcome.log_path}')
      pending[engine.submit(run, settings)] = run
    else:
      record(outcome)
