"""The tables and plot of a sweep, from its runs' outcomes.

Written into the sweep dir after every finished run:
- `results.csv`, one row per point: n (finished seeds), mean and sample sd over
  the seeds of PQ, PQ^Th, PQ^St, SQ, RQ; PQ minus the baseline point's, paired
  by seed, with its 95% t interval, the number of pairs and the verdict
  (`sweep_statistics`); the point's status (finished / failed / retried seeds).
- `runs.csv`, one row per (point, seed): the metrics, the 95% bootstrap interval
  of PQ over the evaluated images, step, status, train processes started, log.
- `results.md`: both tables in Markdown.
- `results.png`: each point's seeds as dots with the mean and interval
  (`sweep_plot`).
"""
import csv
import dataclasses
import os
from typing import Dict, List, Optional, Sequence

from cmt_deeplab_tf.analysis import paper_tables
from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_plot
from cmt_deeplab_tf.analysis import sweep_statistics as statistics

MARKDOWN_FILE = 'results.md'
CSV_FILE = 'results.csv'
RUNS_CSV_FILE = 'runs.csv'
PLOT_FILE = 'results.png'
# (results JSON key, column title), percentages as the train CLI writes them.
METRICS = (('pq', 'PQ'), ('pq_th', 'PQ^Th'), ('pq_st', 'PQ^St'), ('sq', 'SQ'),
           ('rq', 'RQ'))
# The metric compared with the baseline.
COMPARED = 'pq'
POINT_HEADER = ['point', 'n', *(f'{title} {part}' for _, title in METRICS
                                for part in ('mean', 'sd')),
                'delta PQ', 'delta PQ 95% low', 'delta PQ 95% high', 'pairs', 'verdict',
                'status', 'bindings']
RUN_HEADER = ['point', 'seed', *(title for _, title in METRICS),
              'PQ 95% bootstrap low', 'PQ 95% bootstrap high', 'step', 'status',
              'attempts', 'log']
MISSING = '-'


@dataclasses.dataclass(frozen=True)
class PointSummary:
  """One point over its seeds."""
  point: sweep.Point
  estimates: Dict[str, statistics.Estimate]
  comparison: Optional[statistics.Comparison]
  values: Dict[object, float]
  status: str


def metric_by_seed(outcomes: Sequence[sweep.Outcome], key: str) -> Dict[object, float]:
  """seed -> the metric `key` of the finished runs among `outcomes`."""
  return {o.run.seed: float(o.results[key]) for o in outcomes
          if o.status == sweep.FINISHED}


def summarize(points: Sequence[sweep.Point], outcomes: Sequence[sweep.Outcome],
              baseline: Optional[str] = None) -> List[PointSummary]:
  """Per point: estimates over the seeds and the paired comparison with `baseline`."""
  by_point = {p.name: [o for o in outcomes if o.run.point.name == p.name] for p in points}
  reference = metric_by_seed(by_point[baseline], COMPARED) if baseline else None
  summaries = []
  for point in points:
    own = by_point[point.name]
    values = metric_by_seed(own, COMPARED)
    estimates = {key: statistics.t_estimate(list(metric_by_seed(own, key).values()))
                 for key, _ in METRICS}
    comparison = (statistics.paired_difference(values, reference)
                  if reference is not None and point.name != baseline else None)
    summaries.append(PointSummary(point, estimates, comparison, values, _status(own)))
  return summaries


def _seed_label(seed) -> str:
  return 'the run' if seed is None else f'seed {seed}'


def _status(outcomes: Sequence[sweep.Outcome]) -> str:
  """'k/n finished', then the failed and retried seeds with their attempts."""
  finished = [o for o in outcomes if o.status == sweep.FINISHED]
  parts = [f'{len(finished)}/{len(outcomes)} finished']
  for label, selected in (
      ('failed', [o for o in outcomes if o.status == sweep.FAILED]),
      ('retried', [o for o in finished if o.attempts > 1])):
    if selected:
      parts.append(f'{label}: ' + ', '.join(
          f'{_seed_label(o.run.seed)} ({o.attempts} attempt{"s" * (o.attempts != 1)})'
          for o in selected))
  return '; '.join(parts)


def _number(value: Optional[float], signed: bool = False) -> str:
  if value is None:
    return MISSING
  return f'{value:+.2f}' if signed else f'{value:.2f}'


def _point_csv_row(summary: PointSummary) -> List[str]:
  cells = [summary.point.name, str(summary.estimates[COMPARED].n)]
  for key, _ in METRICS:
    estimate = summary.estimates[key]
    cells += [_number(estimate.mean), _number(estimate.sd)]
  comparison = summary.comparison
  if comparison is None:
    cells += [MISSING] * 5
  else:
    difference = comparison.estimate
    cells += [_number(difference.mean, True), _number(difference.low, True),
              _number(difference.high, True), str(difference.n), comparison.verdict]
  return cells + [summary.status, '; '.join(summary.point.bindings)]


def _point_markdown_row(summary: PointSummary) -> List[str]:
  cells = [summary.point.name, str(summary.estimates[COMPARED].n)]
  for key, _ in METRICS:
    estimate = summary.estimates[key]
    cells.append(MISSING if estimate.mean is None else
                 _number(estimate.mean) + ('' if estimate.sd is None
                                           else f' ± {estimate.sd:.2f}'))
  comparison = summary.comparison
  if comparison is None:
    cells += [MISSING] * 3
  else:
    difference = comparison.estimate
    interval = ('' if difference.low is None else
                f' [{_number(difference.low, True)}, {_number(difference.high, True)}]')
    cells += [_number(difference.mean, True) + interval, str(difference.n),
              comparison.verdict]
  return cells + [summary.status, '; '.join(summary.point.bindings)]


def _run_row(outcome: sweep.Outcome) -> List[str]:
  results = outcome.results if outcome.status == sweep.FINISHED else None
  cells = [outcome.run.point.name, MISSING if outcome.run.seed is None
           else str(outcome.run.seed)]
  for key in [key for key, _ in METRICS] + ['pq_ci_low', 'pq_ci_high']:
    cells.append(_number(results.get(key)) if results else MISSING)
  status = outcome.status if outcome.attempts else f'{outcome.status} before'
  return cells + [str(results.get('step', MISSING)) if results else MISSING, status,
                  str(outcome.attempts), outcome.log_path]


def markdown(summaries: Sequence[PointSummary], outcomes: Sequence[sweep.Outcome],
             baseline: Optional[str]) -> str:
  """Both tables in Markdown, with a legend."""
  compared = f'PQ - {baseline} [95% CI]' if baseline else 'PQ - baseline'
  header = ['point', 'n', *(title for _, title in METRICS), compared, 'pairs', 'verdict',
            'status', 'bindings']
  legend = ('Mean ± sample standard deviation over the seeds. '
            + (f'PQ - {baseline}: the difference from {baseline} paired by seed, '
               'with its 95% t interval; verdict: better / worse when the interval '
               'excludes 0, else within noise.' if baseline else
               'No --baseline: no comparison.'))
  return '\n\n'.join([
      '# Sweep results', legend,
      paper_tables.markdown_table(header, [_point_markdown_row(s) for s in summaries]),
      '## Runs', 'PQ 95% bootstrap: the interval of PQ over the evaluated images.',
      paper_tables.markdown_table(RUN_HEADER, [_run_row(o) for o in outcomes])]) + '\n'


def _write_csv(path: str, header: Sequence[str], rows) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def write(points: Sequence[sweep.Point], outcomes: Sequence[sweep.Outcome],
          sweep_dir: str, baseline: Optional[str] = None) -> List[PointSummary]:
  """Writes the tables and the plot into `sweep_dir`; returns the summaries."""
  summaries = summarize(points, outcomes, baseline)
  _write_csv(os.path.join(sweep_dir, CSV_FILE), POINT_HEADER,
             [_point_csv_row(s) for s in summaries])
  _write_csv(os.path.join(sweep_dir, RUNS_CSV_FILE), RUN_HEADER,
             [_run_row(o) for o in outcomes])
  with open(os.path.join(sweep_dir, MARKDOWN_FILE), 'w') as f:
    f.write(markdown(summaries, outcomes, baseline))
  sweep_plot.plot(os.path.join(sweep_dir, PLOT_FILE), summaries, baseline)
  return summaries
