"""The sweep's plot: PQ per point over its seeds, and the paired differences.

Left panel: each point's seeds as dots, the mean as a bar and the 95% t interval
of the mean. Right panel (with a baseline): each point's per-seed differences
from the baseline as dots, their mean and the paired 95% interval, and zero.
Drawn with matplotlib's Agg canvas (no display needed).
"""
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib import figure as figure_lib

_DOT_SPREAD = 0.15


def _offsets(count: int) -> np.ndarray:
  """Horizontal offsets of `count` dots around their point's position."""
  return np.linspace(-_DOT_SPREAD, _DOT_SPREAD, count) if count > 1 else np.zeros(count)


def _panel(axes, labels, values, estimates, title, ylabel):
  """Dots per point, mean bar and interval; `estimates` may hold None."""
  for x, (dots, estimate) in enumerate(zip(values, estimates)):
    axes.plot(x + _offsets(len(dots)), dots, 'o', color='tab:blue', alpha=0.6)
    if estimate is None or estimate.mean is None:
      continue
    axes.plot([x - 0.3, x + 0.3], [estimate.mean] * 2, color='black')
    if estimate.low is not None:
      axes.errorbar(x + 0.3, estimate.mean, color='tab:red', capsize=4,
                    yerr=[[estimate.mean - estimate.low], [estimate.high - estimate.mean]])
  axes.set_xticks(range(len(labels)))
  axes.set_xticklabels(labels, rotation=30, ha='right')
  axes.set_xlim(-0.7, len(labels) - 0.3)
  axes.set_title(title)
  axes.set_ylabel(ylabel)


def plot(path: str, summaries: Sequence, baseline: Optional[str] = None) -> None:
  """Writes the PNG of `sweep_report.summarize`'s summaries to `path`."""
  compared = [s for s in summaries if s.comparison is not None]
  panels = 2 if compared else 1
  figure = figure_lib.Figure(figsize=(1.2 * len(summaries) + 3 * panels, 4.5))
  backend_agg.FigureCanvasAgg(figure)
  left = figure.add_subplot(1, panels, 1)
  _panel(left, [s.point.name for s in summaries],
         [list(s.values.values()) for s in summaries],
         [s.estimates['pq'] for s in summaries],
         'PQ per seed: mean and 95% interval', 'PQ (%)')
  if compared:
    right = figure.add_subplot(1, 2, 2)
    right.axhline(0.0, color='gray', linewidth=1)
    _panel(right, [f'{s.point.name}\n({s.comparison.verdict})' for s in compared],
           [list(s.comparison.differences) for s in compared],
           [s.comparison.estimate for s in compared],
           f'PQ - {baseline}, paired by seed', 'difference (PQ points)')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
