"""Tests of the benchmark timing harness on a fake clock."""
import pytest
import tensorflow as tf

from cmt_deeplab_tf.analysis import timing


class _FakeClock:
  """perf_counter that only advances when a candidate 'works'."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = _FakeClock()
  monkeypatch.setattr(timing.time, 'perf_counter', fake)
  return fake


def _candidate(clock, log, name, durations):
  """A call that logs its name and takes the next of `durations` seconds."""
  durations = iter(durations)

  def call():
    log.append(name)
    clock.now += next(durations)
    return {'out': tf.constant([1.0])}
  return call


def test_rounds_alternate_order_after_warmup(clock):
  log = []
  hook = lambda: log.append('after_warmup')
  timing.interleaved({'a': _candidate(clock, log, 'a', [9] * 5),
                      'b': _candidate(clock, log, 'b', [9] * 5)},
                     rounds=3, warmup=1, after_warmup=hook)
  assert log == ['a', 'b', 'after_warmup', 'a', 'b', 'b', 'a', 'a', 'b']


def test_medians_minimum_and_per_round_ratios(clock):
  log = []
  # Warm-up durations (100) must not count.
  timings = timing.interleaved(
      {'a': _candidate(clock, log, 'a', [100, 1, 2, 4, 3]),
       'b': _candidate(clock, log, 'b', [100, 2, 6, 4, 9])}, rounds=4)
  assert timings.seconds['a'] == [1, 2, 4, 3]
  assert timings.median('a') == 2.5 and timings.minimum('b') == 2
  assert timings.ratios('b', 'a') == [2, 3, 1, 3]
  median, low, high = timings.ratio_summary('b', 'a')
  assert median == 2.5 and low <= median <= high
  assert timings.call_seconds['a'] == [1, 2, 4, 3]  # The fake fetch takes no time.


def test_outputs_are_fetched_to_numpy():
  fetched = timing.fetch({'x': tf.constant([2.0]), 'n': 3})
  assert fetched['x'].tolist() == [2.0] and fetched['n'] == 3


def test_median_seconds_of_one_call(clock):
  assert timing.median_seconds(_candidate(clock, [], 'a', [5, 1, 7, 3]), rounds=3) == 3


@pytest.mark.parametrize('calls, rounds, warmup, match', [
    ({}, 1, 1, 'at least one'),
    ({'a': lambda: None}, 0, 1, 'rounds must be >= 1'),
    ({'a': lambda: None}, 1, -1, 'warmup >= 0'),
])
def test_bad_arguments_raise(calls, rounds, warmup, match):
  with pytest.raises(ValueError, match=match):
    timing.interleaved(calls, rounds, warmup)


def test_unknown_candidate_is_named(clock):
  timings = timing.interleaved({'a': _candidate(clock, [], 'a', [1, 1])}, rounds=1)
  with pytest.raises(KeyError, match="'b'.*candidates: \\['a'\\]"):
    timings.median('b')


def test_parse_size_reads_height_by_width_and_names_the_flag():
  assert timing.parse_size('800x1200') == (800, 1200)
  with pytest.raises(ValueError, match=r"--sizes entries must be HxW, got '800'"):
    timing.parse_size('800')
  with pytest.raises(ValueError, match='--crop entries'):
    timing.parse_size('axb', '--crop')
