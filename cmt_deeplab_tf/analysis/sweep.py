"""Gin ablation sweeps: the points, their seeded runs, and the train process of a run.

A sweep is a list of `Point`s, each a name and a list of gin bindings applied on
top of a base gin file and common bindings. Points come either from a grid (the
cross product of `Param=[v1, v2, ...]` axes) or from named override sets
(`name:binding;binding`, one point at a time). Each point runs once per seed
(`ExperimentConfig.seed=<s>` bound last), or once with the config's own seed
when the sweep has no seeds.

A `Run` (point, seed) trains in its own process and model dir,
`<sweep_dir>/<point>/seed-<s>` (`<sweep_dir>/<point>` without seeds), its output
in `<sweep_dir>/logs/<point>-seed-<s>.log` (`<point>.log`). This module has no
TensorFlow import: `launch` is what a worker of a distributed engine runs.
`sweep_runner` schedules the runs, skips finished ones and collects results.
"""
import ast
import dataclasses
import itertools
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

TRAIN_MODULE = 'cmt_deeplab_tf.train'
RESULT_FILE = 'sweep_result.json'
LOG_DIR = 'logs'
SEED_PARAMETER = 'ExperimentConfig.seed'
# Train CLI modes that end with eval results to tabulate.
MODES = ('train_and_eval', 'eval')
_UNSAFE_NAME_CHARACTERS = re.compile(r'[^A-Za-z0-9._-]+')


@dataclasses.dataclass(frozen=True)
class Point:
  """One sweep point: a name (its model dir) and its gin bindings."""
  name: str
  bindings: tuple


@dataclasses.dataclass(frozen=True)
class Run:
  """One point trained with one seed (None: the config's own seed)."""
  point: Point
  seed: Optional[int] = None

  @property
  def name(self) -> str:
    return self.point.name if self.seed is None else f'{self.point.name}/seed-{self.seed}'

  @property
  def bindings(self) -> tuple:
    seed = () if self.seed is None else (f'{SEED_PARAMETER}={self.seed}',)
    return (*self.point.bindings, *seed)

  def model_dir(self, sweep_dir: str) -> str:
    return os.path.join(sweep_dir, *self.name.split('/'))

  def log_path(self, sweep_dir: str) -> str:
    return os.path.join(sweep_dir, LOG_DIR, self.name.replace('/', '-') + '.log')


@dataclasses.dataclass(frozen=True)
class Settings:
  """How every run of a sweep calls the train CLI.

  Attributes:
    sweep_dir: absolute; holds the model dirs, logs and tables.
    base_gin: absolute path of the gin file every run starts from.
    common_bindings: bindings of every run, before the point's own.
    mode: the train CLI's --mode (`MODES`).
    command_prefix: the train CLI call; None: this Python's `-m cmt_deeplab_tf.train`
      on the machine that runs it.
  """
  sweep_dir: str
  base_gin: str
  common_bindings: tuple = ()
  mode: str = 'train_and_eval'
  command_prefix: Optional[tuple] = None


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a run produced.

  Attributes:
    run: the run.
    status: FINISHED or FAILED.
    results: its eval results (the highest step's), or None.
    log_path: its log.
    attempts: train processes started for it by this sweep (0: finished before).
  """
  run: Run
  status: str
  results: Optional[Dict[str, object]]
  log_path: str
  attempts: int = 1


FINISHED, FAILED = 'finished', 'failed'


def _safe_name(text: str) -> str:
  return _UNSAFE_NAME_CHARACTERS.sub('_', text).strip('_')


def parse_grid_axis(axis: str):
  """'Scope.param=[v1, v2]' -> ('Scope.param', [gin value strings]).

  Raises:
    ValueError: naming --grid, if the axis is not `name=[python literals]`.
  """
  name, separator, values_text = axis.partition('=')
  name = name.strip()
  try:
    values = ast.literal_eval(values_text.strip()) if separator else None
  except (ValueError, SyntaxError):
    values = None
  if not name or not isinstance(values, list) or not values:
    raise ValueError(f"--grid={axis!r} is not of the form 'Scope.param=[value, ...]' "
                     'with a non-empty list of Python literals.')
  return name, [repr(value) for value in values]


def _grid_point_name(bindings: Sequence[str]) -> str:
  """'A.x=True', 'B.y=2' -> 'x-True__y-2' (the last part of each gin name)."""
  parts = []
  for binding in bindings:
    name, _, value = binding.partition('=')
    parts.append(f'{name.split(".")[-1]}-{_safe_name(value)}')
  return '__'.join(parts)


def grid_points(axes: Sequence[str]) -> List[Point]:
  """The cross product of the grid axes, first axis varying slowest."""
  parsed = [parse_grid_axis(axis) for axis in axes]
  points = []
  for values in itertools.product(*(axis_values for _, axis_values in parsed)):
    bindings = tuple(f'{name}={value}' for (name, _), value in zip(parsed, values))
    points.append(Point(_grid_point_name(bindings), bindings))
  return _check_unique(points, '--grid')


def named_points(specs: Sequence[str]) -> List[Point]:
  """'name:binding;binding' specs -> points ('baseline:' has no bindings).

  Raises:
    ValueError: naming --points, for a missing or unsafe name.
  """
  points = []
  for spec in specs:
    name, separator, bindings_text = spec.partition(':')
    name = name.strip()
    if not separator or not name or _safe_name(name) != name:
      raise ValueError(f"--points={spec!r} is not 'name:binding;binding' with a name of "
                       'letters, digits, ".", "_" or "-".')
    bindings = tuple(b.strip() for b in bindings_text.split(';') if b.strip())
    points.append(Point(name, bindings))
  return _check_unique(points, '--points')


def _check_unique(points: List[Point], flag: str) -> List[Point]:
  names = [point.name for point in points]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise ValueError(f'{flag} gives several points the same name: {duplicates}.')
  return points


def runs(points: Sequence[Point], seeds: Sequence[int] = ()) -> List[Run]:
  """Every point with every seed (point-major); one run per point without seeds.

  Raises:
    ValueError: naming --seeds, if a seed repeats or a point binds the seed itself.
  """
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds={",".join(map(str, seeds))} repeats a seed.')
  if seeds:
    for point in points:
      check_unbound(point.bindings, (SEED_PARAMETER,), '--seeds',
                    f'point {point.name!r}')
  return [Run(point, seed) for point in points for seed in (seeds or (None,))]


def check_baseline(points: Sequence[Point], baseline: Optional[str]) -> None:
  """Raises ValueError naming --baseline if it is given and not a point's name."""
  names = [point.name for point in points]
  if baseline is not None and baseline not in names:
    raise ValueError(f'--baseline={baseline} is not one of the points {names}.')


def check_unbound(bindings: Sequence[str], parameters: Sequence[str], flag: str,
                  where: str) -> None:
  """Raises ValueError if a binding sets one of `parameters`, which `flag` sets."""
  for binding in bindings:
    if binding.partition('=')[0].strip() in parameters:
      raise ValueError(f'{flag} sets {binding.partition("=")[0].strip()}; {where} '
                       f'binds it too ({binding!r}).')


def train_command(run: Run, settings: Settings) -> List[str]:
  """The train CLI call of a run: base gin, common bindings, then the run's."""
  prefix = settings.command_prefix or (sys.executable, '-m', TRAIN_MODULE)
  return [*prefix, f'--mode={settings.mode}',
          f'--model_dir={run.model_dir(settings.sweep_dir)}',
          f'--gin_file={settings.base_gin}',
          *(f'--gin_param={b}' for b in (*settings.common_bindings, *run.bindings))]


def launch(run: Run, settings: Settings, threads: Optional[int] = None) -> int:
  """Runs the train CLI of `run` in its own process, appending to its log.

  Args:
    run: the run.
    settings: the sweep's settings.
    threads: TensorFlow's intra-op threads in the process
      (TF_NUM_INTRAOP_THREADS, unless set here); None: TensorFlow's default.

  Returns:
    The process's exit code.
  """
  log_path = run.log_path(settings.sweep_dir)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  command = train_command(run, settings)
  environment = dict(os.environ)
  if threads:
    environment.setdefault('TF_NUM_INTRAOP_THREADS', str(threads))
  with open(log_path, 'a') as log:
    log.write(f'$ {subprocess.list2cmdline(command)}\n')
    log.flush()
    return subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
