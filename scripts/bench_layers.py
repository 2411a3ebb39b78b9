"""A/B latency of the transformer layers against another git revision (issue 3).

The shared machine's speed drifts by several percent within minutes, more than
a typical optimisation of one layer gains, so two versions of the code are
compared in ONE process: the `--baseline` revision's package is extracted with
`git archive` into a temporary directory and imported under another name, and
every round calls the baseline and the working-tree layer back to back (in
alternating order). The layers are CMT-S's: the CMT layers at strides 4, 8 and
16 of a `--size` input (widths and heads of `cmt_deeplab_s`) and MaX-S's
dual-path layer at stride 16, at batch 1, float32, inference, in a
`tf.function`. Prints the medians and the median (and quartiles) of the
per-round ratios new / baseline.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_layers.py --baseline=HEAD~1
"""
import importlib
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.modeling.layers import clustering_transformer

_BASELINE = flags.DEFINE_string('baseline', 'HEAD', 'Git revision to compare.')
_SIZE = flags.DEFINE_integer('size', 641, 'Square input size (pixels).')
_ROUNDS = flags.DEFINE_integer('rounds', 151, 'Timed rounds.')
_NUM_CENTERS = 128
_CENTER_CHANNELS = 256
# (name, stride, pixel channels, filters, heads, dual-path) of cmt_deeplab_s's
# decoder (filters and heads scale with the stride) and of MaX-S.
_LAYERS = (('CMT stride 4', 4, 256, 32, 2, False),
           ('CMT stride 8', 8, 512, 64, 4, False),
           ('CMT stride 16', 16, 2048, 128, 8, False),
           ('dual-path stride 16', 16, 2048, 128, 8, True))
_PACKAGE = 'cmt_deeplab_tf'
_BASELINE_PACKAGE = 'cmt_deeplab_baseline'


def import_baseline(revision, directory):
  """Imports `revision`'s package as `cmt_deeplab_baseline`.

  Its gin decorators are dropped: the working tree registers the same names.
  """
  root = pathlib.Path(__file__).resolve().parents[1]
  archive = subprocess.run(['git', 'archive', revision, _PACKAGE], cwd=root,
                           check=True, capture_output=True).stdout
  subprocess.run(['tar', '-x', '-C', directory], input=archive, check=True)
  package = pathlib.Path(directory) / _BASELINE_PACKAGE
  (pathlib.Path(directory) / _PACKAGE).rename(package)
  for path in package.rglob('*.py'):
    text = re.sub(r'\b%s\b' % _PACKAGE, _BASELINE_PACKAGE, path.read_text())
    path.write_text(re.sub(r'^@gin\.configurable.*\n', '', text, flags=re.M))
  sys.path.insert(0, directory)
  return importlib.import_module(
      f'{_BASELINE_PACKAGE}.modeling.layers.clustering_transformer')


def layer_call(module, stride, channels, filters, heads, dual_path):
  """A traced inference call of one layer on fixed random inputs."""
  rng = np.random.default_rng(0)
  size = (_SIZE.value - 1) // stride + 1
  pixels = tf.constant(np.maximum(rng.normal(size=(1, size, size, channels)),
                                  0.0), tf.float32)
  centers = tf.constant(rng.normal(size=(1, _NUM_CENTERS, _CENTER_CHANNELS)),
                        tf.float32)
  previous = tf.constant(rng.normal(size=(1, (size + 1) // 2,
                                          (size + 1) // 2, _NUM_CENTERS)),
                         tf.float32)
  switches = module.DUAL_PATH_SWITCHES if dual_path else {}
  layer = module.ClusteringTransformerLayer(filters=filters, num_heads=heads,
                                            **switches)
  args = (pixels, centers) if dual_path else (pixels, centers, previous)
  function = tf.function(lambda *a: layer(*a, training=False)['pixels'])
  function(*args)
  return lambda: function(*args).numpy()


def paired_seconds(calls, rounds):
  """{name: [seconds]} of `calls`, called back to back in alternating order."""
  for call in calls.values():
    call()
  times = {name: [] for name in calls}
  names = list(calls)
  for round_index in range(rounds):
    for name in names[::-1] if round_index % 2 else names:
      start = time.perf_counter()
      calls[name]()
      times[name].append(time.perf_counter() - start)
  return times


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as directory:
    baseline = import_baseline(_BASELINE.value, directory)
    print(f'{_SIZE.value}x{_SIZE.value} input, {_ROUNDS.value} rounds, '
          f'baseline {_BASELINE.value}\n')
    print('| layer | baseline (ms) | working tree (ms) | new / baseline, '
          'median of rounds (quartiles) |')
    print('|---|---|---|---|')
    for name, *config in _LAYERS:
      calls = {'baseline': layer_call(baseline, *config),
               'new': layer_call(clustering_transformer, *config)}
      times = paired_seconds(calls, _ROUNDS.value)
      ratios = [n / b for n, b in zip(times['new'], times['baseline'])]
      low, _, high = statistics.quantiles(ratios, n=4)
      print(f'| {name} | {statistics.median(times["baseline"]) * 1e3:.1f} '
            f'| {statistics.median(times["new"]) * 1e3:.1f} '
            f'| {statistics.median(ratios):.3f} ({low:.3f}-{high:.3f}) |',
            flush=True)


if __name__ == '__main__':
  app.run(main)
