"""Statistics over the seeds of a sweep: spread per point, paired differences.

- A point's metric over its seeds: n, mean, sample standard deviation (n - 1 in
  the denominator) and the 95% t interval of the mean.
- A point against the baseline point: the per-seed differences over the seeds
  both finished (paired by seed: the same seed gives both runs the same data
  order and, with deterministic training, the same initial weights), their mean
  and the paired t interval mean +- t_{0.975, n-1} * sd / sqrt(n). The verdict
  is 'better' when the interval lies above zero, 'worse' when below, otherwise
  'within noise'; with fewer than two pairs there is no interval.
"""
import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
BETTER, WORSE, NOISE = 'better', 'worse', 'within noise'
TOO_FEW = 'n < 2'


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of n values with its spread; None where n is too small."""
  n: int
  mean: Optional[float]
  sd: Optional[float]
  low: Optional[float]
  high: Optional[float]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A point minus the baseline, paired by seed."""
  seeds: tuple
  differences: tuple
  estimate: Estimate
  verdict: str


def t_estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
  """Mean, sample sd and the t interval of the mean of `values`."""
  values = np.asarray(values, np.float64)
  n = values.size
  if n == 0:
    return Estimate(0, None, None, None, None)
  mean = float(values.mean())
  if n == 1:
    return Estimate(1, mean, None, None, None)
  sd = float(values.std(ddof=1))
  half_width = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
  return Estimate(n, mean, sd, mean - half_width, mean + half_width)


def verdict(estimate: Estimate) -> str:
  """'better' / 'worse' if the interval excludes zero, else 'within noise'."""
  if estimate.low is None:
    return TOO_FEW
  if estimate.low > 0:
    return BETTER
  if estimate.high < 0:
    return WORSE
  return NOISE


def paired_difference(values: Mapping[object, float], baseline: Mapping[object, float],
                      level: float = LEVEL) -> Comparison:
  """`values` minus `baseline` over the seeds (keys) both have.

  Args:
    values: seed (int, or None for a run with the config's seed) -> metric of
      the point.
    baseline: seed -> metric of the baseline point.
    level: the interval's coverage.
  """
  seeds = tuple(sorted(set(values) & set(baseline), key=lambda s: -1 if s is None else s))
  differences = tuple(values[s] - baseline[s] for s in seeds)
  estimate = t_estimate(differences, level)
  return Comparison(seeds, differences, estimate, verdict(estimate))
