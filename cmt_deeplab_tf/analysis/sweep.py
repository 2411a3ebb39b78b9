"""Gin ablation sweeps: one train + eval process and model dir per point.

A sweep is a list of `Point`s, each a name and a list of gin bindings applied on
top of a base gin file and common bindings. Points come either from a grid (the
cross product of `Param=[v1, v2, ...]` axes) or from named override sets
(`name:binding;binding`, one point at a time).

Every point runs the train CLI in its own subprocess with its own model dir,
`<sweep_dir>/<point name>`; its output goes to `<sweep_dir>/logs/<name>.log`.
When the process exits cleanly, the last `eval/results-<step>.json` of the point
is copied into `<sweep_dir>/<name>/sweep_result.json`, which marks the point as
finished. Running the sweep again skips finished points and re-runs unfinished
ones in the same model dir, so the trainer resumes from their checkpoints.
"""
import ast
import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from cmt_deeplab_tf.analysis import paper_tables

TRAIN_COMMAND = (sys.executable, '-m', 'cmt_deeplab_tf.train')
RESULT_FILE = 'sweep_result.json'
LOG_DIR = 'logs'
MARKDOWN_FILE = 'results.md'
CSV_FILE = 'results.csv'
# (results JSON key, column title), percentages as the train CLI writes them.
METRICS = (('pq', 'PQ'), ('pq_th', 'PQ^Th'), ('pq_st', 'PQ^St'), ('sq', 'SQ'),
           ('rq', 'RQ'))
HEADER = ['point', *(title for _, title in METRICS), 'step', 'status', 'bindings', 'log']
FINISHED, FAILED = 'finished', 'failed'
# Train CLI modes that end with eval results to tabulate.
MODES = ('train_and_eval', 'eval')
_UNSAFE_NAME_CHARACTERS = re.compile(r'[^A-Za-z0-9._-]+')


@dataclasses.dataclass(frozen=True)
class Point:
  """One sweep point: a name (its model dir) and its gin bindings."""
  name: str
  bindings: tuple


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a point produced: its status, eval results (if any) and log path."""
  point: Point
  status: str
  results: Optional[Dict[str, float]]
  log_path: str
  skipped: bool = False


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


def final_results(model_dir: str) -> Optional[Dict[str, float]]:
  """The eval results of the highest step in a model dir, or None if it has none."""
  try:
    return paper_tables.load_results(model_dir, [key for key, _ in METRICS],
                                     f'sweep point {model_dir}')
  except ValueError:
    return None


def train_command(point: Point, model_dir: str, base_gin: str,
                  common_bindings: Sequence[str], mode: str,
                  command_prefix: Sequence[str] = TRAIN_COMMAND) -> List[str]:
  """The train CLI call of one point: base gin, common bindings, then the point's."""
  return [*command_prefix, f'--mode={mode}', f'--model_dir={model_dir}',
          f'--gin_file={base_gin}',
          *(f'--gin_param={b}' for b in (*common_bindings, *point.bindings))]


def run_point(point: Point, sweep_dir: str, base_gin: str,
              common_bindings: Sequence[str], mode: str,
              command_prefix: Sequence[str] = TRAIN_COMMAND) -> Outcome:
  """Runs one point in its own process unless it has finished before."""
  model_dir = os.path.join(sweep_dir, point.name)
  result_path = os.path.join(model_dir, RESULT_FILE)
  log_path = os.path.join(sweep_dir, LOG_DIR, f'{point.name}.log')
  if os.path.exists(result_path):
    with open(result_path) as f:
      return Outcome(point, FINISHED, json.load(f), log_path, skipped=True)
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  command = train_command(point, model_dir, base_gin, common_bindings, mode,
                          command_prefix)
  with open(log_path, 'a') as log:
    log.write(f'$ {subprocess.list2cmdline(command)}\n')
    log.flush()
    return_code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
  results = final_results(model_dir)
  if return_code != 0 or results is None:
    return Outcome(point, FAILED, results, log_path)
  with open(result_path, 'w') as f:
    json.dump(results, f, indent=2)
  return Outcome(point, FINISHED, results, log_path)


def run_sweep(points: Sequence[Point], sweep_dir: str, base_gin: str,
              common_bindings: Sequence[str] = (), mode: str = 'train_and_eval',
              command_prefix: Sequence[str] = TRAIN_COMMAND,
              report=print) -> List[Outcome]:
  """Runs every point in turn, writes the tables and returns the outcomes."""
  os.makedirs(sweep_dir, exist_ok=True)
  outcomes = []
  for index, point in enumerate(points, 1):
    report(f'[{index}/{len(points)}] {point.name}: {" ".join(point.bindings) or "(base)"}')
    outcome = run_point(point, sweep_dir, base_gin, common_bindings, mode,
                        command_prefix)
    report(f'  {_describe(outcome)}')
    outcomes.append(outcome)
    write_tables(outcomes, sweep_dir)
  return outcomes


def _describe(outcome: Outcome) -> str:
  if outcome.status == FAILED:
    return f'FAILED, see {outcome.log_path}'
  pq = outcome.results['pq']
  return f'{"skipped, finished before" if outcome.skipped else "finished"}: PQ {pq:.2f}'


def _row(outcome: Outcome) -> List[str]:
  results = outcome.results if outcome.status == FINISHED else None
  metrics = [f'{results[key]:.2f}' if results else '-' for key, _ in METRICS]
  step = str(results.get('step', '-')) if results else '-'
  return [outcome.point.name, *metrics, step, outcome.status,
          '; '.join(outcome.point.bindings), outcome.log_path]



def markdown_table(outcomes: Sequence[Outcome]) -> str:
  """The results as a Markdown table (failed points show '-' and their log)."""
  return paper_tables.markdown_table(HEADER, [_row(o) for o in outcomes]) + '\n'


def write_tables(outcomes: Sequence[Outcome], sweep_dir: str) -> None:
  """Writes results.md and results.csv into the sweep dir."""
  with open(os.path.join(sweep_dir, MARKDOWN_FILE), 'w') as f:
    f.write(markdown_table(outcomes))
  with open(os.path.join(sweep_dir, CSV_FILE), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    writer.writerows(_row(outcome) for outcome in outcomes)
