"""The one timing harness of the benchmarks: warm-up, interleaved rounds, medians.

The machine the benchmarks run on is shared and its speed drifts by several
percent within minutes, so candidates are never timed one after the other:
`interleaved` warms every candidate up, then runs `rounds` rounds, each calling
every candidate once (odd rounds in reverse order, so no candidate always runs
first). A figure is the median over rounds (it resists other jobs' bursts); a
comparison is the median of the per-round ratios, each of two calls made back
to back, so a slow phase of the machine cancels out.

API (every script in `scripts/` and `analysis.cost` use it):

  timings = timing.interleaved({'a': call_a, 'b': call_b}, rounds=5, warmup=1)
  timings.median('a')                 # seconds, median over rounds
  timings.minimum('a')
  timings.ratios('b', 'a')            # per-round seconds b / a, [rounds]
  timings.ratio_summary('b', 'a')     # (median, lower quartile, upper quartile)
  timings.median('a', call_only=True) # until the call returned (see below)

A candidate is a callable without arguments. Its time runs until its outputs
are on the host: whatever it returns is fetched with `fetch` (every tensor in
the returned structure is copied to NumPy), so asynchronous work is included.
`call_seconds` stops when the call returns, before the fetch (with eager CPU
execution, which is synchronous, the difference is the copy). `after_warmup`
runs once between the warm-up and the first round (e.g. to start a profiler).
"""
import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import tensorflow as tf


def fetch(outputs: Any) -> Any:
  """Copies every tensor of a nested structure to NumPy (forces its computation)."""
  return tf.nest.map_structure(
      lambda value: value.numpy() if hasattr(value, 'numpy') else value, outputs)


@dataclasses.dataclass(frozen=True)
class Timings:
  """Seconds per candidate and round, in the order the rounds ran.

  Attributes:
    seconds: {name: [rounds]} until the outputs were fetched to the host.
    call_seconds: {name: [rounds]} until the call returned.
  """
  seconds: Dict[str, List[float]]
  call_seconds: Dict[str, List[float]]

  def _of(self, name: str, call_only: bool) -> List[float]:
    table = self.call_seconds if call_only else self.seconds
    if name not in table:
      raise KeyError(f'No timings of {name!r}; candidates: {sorted(table)}.')
    return table[name]

  def median(self, name: str, call_only: bool = False) -> float:
    return statistics.median(self._of(name, call_only))

  def minimum(self, name: str, call_only: bool = False) -> float:
    return min(self._of(name, call_only))

  def ratios(self, name: str, baseline: str, call_only: bool = False) -> List[float]:
    """Per-round ratios `name` / `baseline` of calls made back to back."""
    return [t / b for t, b in zip(self._of(name, call_only),
                                  self._of(baseline, call_only))]

  def ratio_summary(self, name: str, baseline: str,
                    call_only: bool = False) -> Tuple[float, float, float]:
    """(median, lower quartile, upper quartile) of the per-round ratios."""
    ratios = self.ratios(name, baseline, call_only)
    if len(ratios) < 2:
      return ratios[0], ratios[0], ratios[0]
    low, middle, high = statistics.quantiles(ratios, n=4)
    del middle  # The median below is exact for any number of rounds.
    return statistics.median(ratios), low, high


def interleaved(calls: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
                after_warmup: Optional[Callable[[], None]] = None) -> Timings:
  """Times `calls` in turns (see the module docstring).

  Args:
    calls: {name: callable without arguments}; insertion order is the order of
      the even rounds.
    rounds: Timed rounds, each calling every candidate once; >= 1.
    warmup: Untimed calls of each candidate first (tracing, compilation, caches).
    after_warmup: Called once after the warm-up, before the first round.

  Returns:
    The `Timings` of every candidate.

  Raises:
    ValueError: If `calls` is empty, `rounds` < 1 or `warmup` < 0.
  """
  if not calls:
    raise ValueError('interleaved needs at least one call to time.')
  if rounds < 1 or warmup < 0:
    raise ValueError(f'rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}.')
  for _ in range(warmup):
    for call in calls.values():
      fetch(call())
  if after_warmup is not None:
    after_warmup()
  seconds = {name: [] for name in calls}
  call_seconds = {name: [] for name in calls}
  order = list(calls.items())
  for round_index in range(rounds):
    for name, call in order[::-1] if round_index % 2 else order:
      start = time.perf_counter()
      outputs = call()
      call_seconds[name].append(time.perf_counter() - start)
      fetch(outputs)
      seconds[name].append(time.perf_counter() - start)
      del outputs
  return Timings(seconds, call_seconds)


def median_seconds(call: Callable[[], Any], rounds: int, warmup: int = 1) -> float:
  """Median seconds of one candidate alone (when there is nothing to compare)."""
  return interleaved({'call': call}, rounds, warmup).median('call')


def parse_size(text: str, flag: str = '--sizes') -> Tuple[int, int]:
  """'800x1200' -> (800, 1200), for the benchmarks' size flags; an error names `flag`."""
  try:
    height, width = (int(v) for v in text.split('x'))
  except ValueError:
    raise ValueError(f'{flag} entries must be HxW, got {text!r}.') from None
  return height, width
