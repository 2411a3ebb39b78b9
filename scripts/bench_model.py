"""Benchmarks model inference latency on CPU (issue 3, item 11).

Batch 1, float32, `tf.function` with and without XLA (`jit_compile=True`). For
each input size and XLA setting, every model is built, traced and warmed up, and
then the models are timed in turns: each of the `--repeats` rounds calls every
model once, so all models meet the same machine load (the machine is shared;
timing one model after the other let a load change show up as a ratio change),
and every other round calls them in reverse order, so neither model always
runs first.
Each call is timed until its outputs are copied to NumPy ('latency') and for
the call alone ('call'; CPU eager calls are synchronous). Reports the median
and the minimum over the rounds, and for the ratio of the last two models also
the median (and quartiles) of the per-round ratios: each pairs two calls made
back to back, so a slow phase of the machine cancels out. Achieved GFLOP/s = 2 x multiply-adds of the
inference graph (`flop_count`, einsum included) / median latency, compared with
a 4096^3 float32 matmul timed just before each round of models. Prints a
Markdown table and the latency ratios of the last two models.

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
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds (each calls every model).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO: 133.')
_MATMUL_SIZE = 4096


def interleaved_seconds(functions, args, repeats):
  """Per name: (latencies, call times) of `functions[name](*args)`, called in turns.

  Each function is called once to warm up; then every one of `repeats` rounds
  calls each function once, odd rounds in reverse order. A latency runs until
  every output is copied to NumPy; the call time stops when the call returns.
  """
  for function in functions.values():
    function(*args)
  times = {name: ([], []) for name in functions}
  for round_index in range(repeats):
    order = list(functions.items())
    for name, function in order[::-1] if round_index % 2 else order:
      start = time.perf_counter()
      outputs = function(*args)
      times[name][1].append(time.perf_counter() - start)
      tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, 'numpy') else t,
                            outputs)
      times[name][0].append(time.perf_counter() - start)
      del outputs
  return times


def matmul_gflops(repeats):
  """GFLOP/s of a 4096^3 float32 matmul (2 FLOPs per multiply-add), median."""
  a = tf.random.normal([_MATMUL_SIZE, _MATMUL_SIZE])
  b = tf.random.normal([_MATMUL_SIZE, _MATMUL_SIZE])
  latencies, _ = interleaved_seconds({'matmul': tf.function(tf.matmul)}, (a, b),
                                     repeats)['matmul']
  return 2 * _MATMUL_SIZE**3 / statistics.median(latencies) / 1e9


def main(argv):
  del argv
  if not tf.config.experimental.get_synchronous_execution():
    raise RuntimeError('The call-only time needs synchronous execution.')
  models = {name: builder.build_model(name, _NUM_CLASSES.value)
            for name in _MODELS.value}
  print('| model | input | XLA | latency median / min (s) | call median / min (s) '
        f'| GMACs | GFLOP/s | {_MATMUL_SIZE}^3 matmul GFLOP/s | of matmul |')
  print('|---|---|---|---|---|---|---|---|---|')
  results = {}
  for size in _SIZES.value:
    height, width = (int(v) for v in size.split('x'))
    images = tf.random.uniform([1, height, width, 3], -1.0, 1.0)
    macs = {name: flop_count.count_multiply_adds(model, height, width)[0]
            for name, model in models.items()}
    for xla in _XLA.value:
      jit = xla.lower() == 'true'
      functions = {name: tf.function(lambda x, m=model: m(x, training=False),
                                     jit_compile=jit)
                   for name, model in models.items()}
      reference = matmul_gflops(_REPEATS.value)
      times = interleaved_seconds(functions, (images,), _REPEATS.value)
      for name, (latencies, calls) in times.items():
        results[(name, size, jit)] = times[name]
        gflops = 2 * macs[name] / statistics.median(latencies) / 1e9
        print(f'| {name} | {size} | {jit} '
              f'| {statistics.median(latencies):.2f} / {min(latencies):.2f} '
              f'| {statistics.median(calls):.2f} / {min(calls):.2f} '
              f'| {macs[name] / 1e9:.1f} | {gflops:.0f} | {reference:.0f} '
              f'| {gflops / reference:.0%} |', flush=True)
  if len(models) >= 2:
    print_ratios(results, *_MODELS.value[-2:])


def print_ratios(results, first, second):
  """Latency ratios second / first of each size and XLA setting."""
  print(f'\nLatency ratio {second} / {first} (paper FPS 11.9 / 8.1 = 1.47), '
        'by median (by minimum):')
  for (name, size, jit), (latencies, calls) in results.items():
    if name != second:
      continue
    base_latencies, base_calls = results[(first, size, jit)]
    paired = [t / b for t, b in zip(latencies, base_latencies)]
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    print(f'- {size}, XLA={jit}: latency '
          f'{statistics.median(latencies) / statistics.median(base_latencies):.3f} '
          f'({min(latencies) / min(base_latencies):.3f}), call '
          f'{statistics.median(calls) / statistics.median(base_calls):.3f} '
          f'({min(calls) / min(base_calls):.3f}); per-round latency ratios: '
          f'median {statistics.median(paired):.3f} '
          f'(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})')


if __name__ == '__main__':
  app.run(main)
