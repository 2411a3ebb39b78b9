"""Tests of the sweep's statistics (scipy as the reference), verdicts, tables and plot."""
import csv
import math

import numpy as np
from PIL import Image
import pytest
from scipy import stats

from cmt_deeplab_tf.analysis import sweep
from cmt_deeplab_tf.analysis import sweep_report
from cmt_deeplab_tf.analysis import sweep_statistics as statistics

T_975_2 = 4.3027  # t_{0.975} with 2 degrees of freedom, from a printed t table.


def test_estimate_by_hand():
  estimate = statistics.t_estimate([1.0, 2.0, 3.0])
  half = T_975_2 * 1.0 / math.sqrt(3)
  assert (estimate.n, estimate.mean, estimate.sd) == (3, 2.0, 1.0)
  assert estimate.low == pytest.approx(2.0 - half, abs=1e-4)
  assert estimate.high == pytest.approx(2.0 + half, abs=1e-4)


def test_estimate_against_scipy():
  values = [71.2, 69.8, 70.5, 72.9, 68.4]
  estimate = statistics.t_estimate(values)
  low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                               scale=stats.sem(values))
  assert estimate.sd == pytest.approx(np.std(values, ddof=1), rel=1e-12)
  assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-12)


def test_paired_difference_against_scipy_over_the_common_seeds():
  point = {0: 70.1, 1: 72.4, 2: 69.0, 3: 71.7, 5: 80.0}
  baseline = {0: 69.0, 1: 70.9, 2: 68.8, 3: 70.2, 4: 75.0}
  comparison = statistics.paired_difference(point, baseline)
  assert comparison.seeds == (0, 1, 2, 3)
  assert comparison.differences == pytest.approx((1.1, 1.5, 0.2, 1.5), abs=1e-12)
  reference = stats.ttest_rel([70.1, 72.4, 69.0, 71.7], [69.0, 70.9, 68.8, 70.2])
  interval = reference.confidence_interval(0.95)
  assert comparison.estimate.n == 4
  assert comparison.estimate.mean == pytest.approx(1.075, abs=1e-12)
  assert (comparison.estimate.low, comparison.estimate.high) == pytest.approx(
      (interval.low, interval.high), rel=1e-12)


@pytest.mark.parametrize('differences, expected', [
    ([2.0, 2.5, 1.8, 2.2, 2.1], statistics.BETTER),
    ([-1.2, -0.8, -1.5, -1.1, -0.9], statistics.WORSE),
    ([1.0, -1.0, 0.5, -0.7, 0.2], statistics.NOISE),
    ([3.0, -0.5, 2.5], statistics.NOISE),  # Mean +1.67, but the interval crosses 0.
    ([0.4, 0.4], statistics.BETTER),  # No spread: a zero-width interval at +0.4.
    ([5.0], statistics.TOO_FEW),
    ([], statistics.TOO_FEW),
])
def test_verdicts_on_constructed_results(differences, expected):
  baseline = {seed: 60.0 + seed for seed in range(len(differences))}
  point = {seed: baseline[seed] + d for seed, d in enumerate(differences)}
  assert statistics.paired_difference(point, baseline).verdict == expected


def _outcomes(point, pqs, status=sweep.FINISHED, attempts=1):
  return [sweep.Outcome(sweep.Run(point, seed), status,
                        {'pq': pq, 'pq_th': pq + 1, 'pq_st': pq - 2, 'sq': 80.0 + seed,
                         'rq': 60.0, 'step': 30} if status == sweep.FINISHED else None,
                        f'/logs/{point.name}-seed-{seed}.log', attempts)
          for seed, pq in pqs.items()]


BASELINE, BETTER, WORSE, NOISY = (sweep.Point(name, ()) for name in
                                  ('baseline', 'better', 'worse', 'noisy'))
PQS = {'baseline': {0: 60.0, 1: 61.0, 2: 59.5},
       'better': {0: 62.0, 1: 63.1, 2: 61.4},
       'worse': {0: 58.0, 1: 59.1, 2: 57.4},
       'noisy': {0: 62.0, 1: 59.0, 2: 60.0}}


def _write(tmp_path):
  outcomes = [o for point in (BASELINE, BETTER, WORSE, NOISY)
              for o in _outcomes(point, PQS[point.name])]
  outcomes += _outcomes(NOISY, {3: None}, sweep.FAILED, attempts=2)
  sweep_report.write([BASELINE, BETTER, WORSE, NOISY], outcomes, str(tmp_path), 'baseline')
  with open(tmp_path / sweep_report.CSV_FILE) as f:
    return {row['point']: row for row in csv.DictReader(f)}


def test_point_table_holds_the_statistics_and_verdicts(tmp_path):
  rows = _write(tmp_path)
  for name, row in rows.items():
    pqs = list(PQS[name].values())
    assert (row['n'], float(row['PQ mean']), float(row['PQ sd'])) == (
        '3', pytest.approx(np.mean(pqs), abs=0.005),
        pytest.approx(np.std(pqs, ddof=1), abs=0.005))
    assert float(row['SQ mean']) == pytest.approx(81.0, abs=0.005)
  assert [rows[name]['verdict'] for name in ('baseline', 'better', 'worse', 'noisy')] == [
      '-', 'better', 'worse', 'within noise']
  interval = stats.ttest_rel(list(PQS['noisy'].values()),
                             list(PQS['baseline'].values())).confidence_interval(0.95)
  noisy = rows['noisy']
  assert (float(noisy['delta PQ 95% low']), float(noisy['delta PQ 95% high'])) == (
      pytest.approx(interval.low, abs=0.005), pytest.approx(interval.high, abs=0.005))
  assert noisy['pairs'] == '3'
  assert noisy['status'] == '3/4 finished; failed: seed 3 (2 attempts)'


def test_markdown_holds_both_tables(tmp_path):
  _write(tmp_path)
  markdown = (tmp_path / sweep_report.MARKDOWN_FILE).read_text()
  better_mean = np.mean(list(PQS['better'].values()))
  better_sd = np.std(list(PQS['better'].values()), ddof=1)
  difference = stats.ttest_rel(list(PQS['better'].values()),
                               list(PQS['baseline'].values()))
  interval = difference.confidence_interval(0.95)
  assert (f'| better | 3 | {better_mean:.2f} ± {better_sd:.2f} |' in markdown)
  assert (f'| {better_mean - 60.1667:+.2f} [{interval.low:+.2f}, {interval.high:+.2f}] '
          '| 3 | better |') in markdown
  assert '| noisy | 3 | - | - | - | - | - | - | - | - | failed | 2 | /logs/noisy-seed-3.log |' \
      in markdown


def test_plot_is_a_png_beside_the_tables(tmp_path):
  _write(tmp_path)
  path = tmp_path / sweep_report.PLOT_FILE
  assert path.stat().st_size > 1000
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == 'PNG' and min(image.size) > 100
