"""Benchmarks model inference latency on CPU.

Batch 1, float32, `tf.function` with and without XLA (`jit_compile=True`). For
each input size and XLA setting, every model (a `modeling.builder` config) is
built, traced and warmed up, and then the models are timed in turns with the
benchmarks' harness (`analysis.timing.interleaved`): each of the `--rounds`
rounds calls every model once, so all models meet the same machine load, odd
rounds in reverse order. Each call is timed until its outputs are copied to
NumPy ('latency') and for the call alone ('call'; CPU eager calls are
synchronous). Reports the median and the minimum over the rounds, and for the
last two models the median (and quartiles) of the per-round latency ratios.
Achieved GFLOP/s = 2 x multiply-adds of the inference graph (`flop_count`,
einsum included) / median latency, compared with a `--matmul_size`^3 float32
matmul timed just before each group of models. Prints a Markdown table.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_model.py \
      --models=max_deeplab_s,cmt_deeplab_s --sizes=641x641,800x1200
"""
from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import flop_count

_MODELS = flags.DEFINE_list('models', ['max_deeplab_s', 'cmt_deeplab_s'],
                            f'Configs to time, of {sorted(builder.MODELS)}.')
_SIZES = flags.DEFINE_list('sizes', ['641x641', '800x1200'], 'Input sizes HxW.')
_XLA = flags.DEFINE_list('xla', ['false', 'true'], 'jit_compile settings.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds (each calls every model).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO: 133.')
_MATMUL_SIZE = flags.DEFINE_integer('matmul_size', 4096,
                                    'Side of the reference float32 matmul.')



def matmul_gflops(rounds):
  """GFLOP/s of a float32 matmul (2 FLOPs per multiply-add), median of rounds."""
  size = _MATMUL_SIZE.value
  a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
  matmul = tf.function(tf.matmul)
  return 2 * size**3 / timing.median_seconds(lambda: matmul(a, b), rounds) / 1e9


def main(argv):
  del argv
  if not tf.config.experimental.get_synchronous_execution():
    raise RuntimeError('The call-only time needs synchronous execution.')
  if len(set(_MODELS.value)) != len(_MODELS.value):
    raise ValueError(f'--models lists a model twice: {_MODELS.value}.')
  models = {name: builder.build_model(name, _NUM_CLASSES.value)
            for name in _MODELS.value}
  print('| model | input | XLA | latency median / min (s) | call median / min (s) '
        f'| GMACs | GFLOP/s | {_MATMUL_SIZE.value}^3 matmul GFLOP/s | of matmul |')
  print('|---|---|---|---|---|---|---|---|---|')
  ratio_lines = []
  for size in _SIZES.value:
    height, width = timing.parse_size(size)
    images = tf.random.uniform([1, height, width, 3], -1.0, 1.0)
    macs = {name: flop_count.count_multiply_adds(model, height, width)[0]
            for name, model in models.items()}
    for xla in _XLA.value:
      jit = xla.lower() == 'true'
      functions = {name: tf.function(lambda x, m=model: m(x, training=False),
                                     jit_compile=jit)
                   for name, model in models.items()}
      reference = matmul_gflops(_ROUNDS.value)
      timings = timing.interleaved(
          {name: lambda f=function: f(images) for name, function in functions.items()},
          _ROUNDS.value)
      for name in models:
        gflops = 2 * macs[name] / timings.median(name) / 1e9
        print(f'| {name} | {size} | {jit} '
              f'| {timings.median(name):.2f} / {timings.minimum(name):.2f} '
              f'| {timings.median(name, call_only=True):.2f} / '
              f'{timings.minimum(name, call_only=True):.2f} '
              f'| {macs[name] / 1e9:.1f} | {gflops:.0f} | {reference:.0f} '
              f'| {gflops / reference:.0%} |', flush=True)
      if len(models) >= 2:
        first, second = _MODELS.value[-2:]
        median, low, high = timings.ratio_summary(second, first)
        ratio_lines.append(
            f'- {size}, XLA={jit}: per-round latency ratios median {median:.3f} '
            f'(quartiles {low:.3f}-{high:.3f}); ratio of medians '
            f'{timings.median(second) / timings.median(first):.3f}')
  if ratio_lines:
    first, second = _MODELS.value[-2:]
    print(f'\nLatency ratio {second} / {first} (paper FPS 11.9 / 8.1 = 1.47 for '
          'cmt_deeplab_s / max_deeplab_s):')
    print('\n'.join(ratio_lines))


if __name__ == '__main__':
  app.run(main)
