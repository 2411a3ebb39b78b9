"""Benchmarks model inference latency on CPU (issue 3, item 11).

Batch 1, float32, `tf.function` with and without XLA (`jit_compile=True`); the
median of `--repeats` runs after a warm-up, each timed until its outputs are
copied to NumPy ('latency') and, separately, for the call alone ('call only'). Achieved GFLOP/s = 2 x multiply-adds
of the inference graph (`flop_count`, einsum included) / latency, compared with a
4096^3 float32 matmul timed the same way just before each row (the machine is
shared, so the reference is re-measured next to every figure). Prints a Markdown
table; ratios compare figures of the same run only.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_model.py \
      --models=max_deeplab_s,cmt_deeplab_s --sizes=641x641,800x1200
"""
import statistics
import time

from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import flop_count

_MODELS = flags.DEFINE_list('models', ['max_deeplab_s', 'cmt_deeplab_s'],
                            'Configs to time.')
_SIZES = flags.DEFINE_list('sizes', ['641x641', '800x1200'],
                           'Input sizes HxW.')
_XLA = flags.DEFINE_list('xla', ['false', 'true'], 'jit_compile settings.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs (median).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO: 133.')
_MATMUL_SIZE = 4096


def median_seconds(function, *args, repeats, return_call_seconds=False):
  """Median wall time of `function(*args)` after one warm-up call.

  The time runs until every output is copied to NumPy. With
  `return_call_seconds`, also returns the median time of the call alone: on
  CPU with synchronous eager execution (the default) the call returns once
  every op has run, so the difference is the copy of the outputs to NumPy
  (CMT-S returns ~0.5 GB of deep-supervision maps at 800x1200, MaX-S 0.15 GB).
  """
  function(*args)
  times, call_times = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    outputs = function(*args)
    call_times.append(time.perf_counter() - start)
    tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t,
                          outputs)
    times.append(time.perf_counter() - start)
    del outputs
  if return_call_seconds:
    return statistics.median(times), statistics.median(call_times)
  return statistics.median(times)


def matmul_gflops(repeats):
  """GFLOP/s of a 4096^3 float32 matmul (2 FLOPs per multiply-add)."""
  a = tf.random.normal([_MATMUL_SIZE, _MATMUL_SIZE])
  b = tf.random.normal([_MATMUL_SIZE, _MATMUL_SIZE])
  seconds = median_seconds(tf.function(tf.matmul), a, b, repeats=repeats)
  return 2 * _MATMUL_SIZE**3 / seconds / 1e9


def main(argv):
  del argv
  if not tf.config.experimental.get_synchronous_execution():
    raise RuntimeError('The call-only time needs synchronous execution.')
  print('| model | input | XLA | latency (s) | call only (s) | GMACs | GFLOP/s '
        f'| {_MATMUL_SIZE}^3 matmul GFLOP/s | of matmul |')
  print('|---|---|---|---|---|---|---|---|---|')
  latencies, call_latencies = {}, {}
  for name in _MODELS.value:
    model = builder.build_model(name, _NUM_CLASSES.value)
    for size in _SIZES.value:
      height, width = (int(v) for v in size.split('x'))
      macs, _ = flop_count.count_multiply_adds(model, height, width)
      images = tf.random.uniform([1, height, width, 3], -1.0, 1.0)
      for xla in _XLA.value:
        jit = xla.lower() == 'true'
        function = tf.function(lambda x: model(x, training=False),
                               jit_compile=jit)
        reference = matmul_gflops(_REPEATS.value)
        seconds, call_seconds = median_seconds(
            function, images, repeats=_REPEATS.value, return_call_seconds=True)
        latencies[(name, size, jit)] = seconds
        call_latencies[(name, size, jit)] = call_seconds
        gflops = 2 * macs / seconds / 1e9
        print(f'| {name} | {size} | {jit} | {seconds:.2f} | {call_seconds:.2f} '
              f'| {macs / 1e9:.1f} '
              f'| {gflops:.0f} | {reference:.0f} | {gflops / reference:.0%} |',
              flush=True)
  if len(_MODELS.value) == 2:
    first, second = _MODELS.value
    print(f'\nLatency ratio {second} / {first} (paper FPS 11.9 / 8.1 = 1.47):')
    for (name, size, jit), seconds in latencies.items():
      if name == second and (first, size, jit) in latencies:
        ratio = seconds / latencies[(first, size, jit)]
        call_ratio = (call_latencies[(name, size, jit)] /
                      call_latencies[(first, size, jit)])
        print(f'- {size}, XLA={jit}: {ratio:.2f} (call only: {call_ratio:.2f})')


if __name__ == '__main__':
  app.run(main)
