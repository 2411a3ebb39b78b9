"""A/B latency of the transformer layers against another git revision.

The shared machine's speed drifts by several percent within minutes, more than
a typical optimisation of one layer gains, so two versions of the code are
compared in ONE process: the `--baseline` revision's package is extracted with
`git archive` into a temporary directory and imported under another name. The
layers are those of the `--models` configs as `modeling.builder` builds them in
each version (one layer per distinct input shape, e.g. CMT-S's layers at
strides 16, 8 and 4 and MaX-S's dual-path layer), called on the inputs they get
in a forward pass of a `--size` image, at batch 1, float32, inference, in a
`tf.function`. The benchmarks' harness (`analysis.timing.interleaved`) calls
the baseline and the working-tree layer back to back in every round
(alternating order). Prints the medians and the median (and quartiles) of the
per-round ratios new / baseline.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_layers.py --baseline=HEAD~1
"""
import importlib
import pathlib
import re
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.modeling import builder

_BASELINE = flags.DEFINE_string('baseline', 'HEAD', 'Git revision to compare.')
_MODELS = flags.DEFINE_list('models', ['cmt_deeplab_s', 'max_deeplab_s'],
                            'Configs whose transformer layers are timed.')
_SIZE = flags.DEFINE_integer('size', 641, 'Square input size (pixels).')
_ROUNDS = flags.DEFINE_integer('rounds', 151, 'Timed rounds.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO: 133.')
_LAYER_CLASS = 'ClusteringTransformerLayer'
_PACKAGE = 'cmt_deeplab_tf'
_BASELINE_PACKAGE = 'cmt_deeplab_baseline'
# `@gin.configurable` with or without arguments, which may span lines.
_GIN_DECORATOR = r'^@gin\.configurable(?:\((?:[^()]|\([^()]*\))*\))?[ \t]*\n'


def import_baseline_builder(revision, directory):
  """Imports `revision`'s package as `cmt_deeplab_baseline`; returns its builder.

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
    path.write_text(re.sub(_GIN_DECORATOR, '', text, flags=re.M))
  sys.path.insert(0, directory)
  return importlib.import_module(f'{_BASELINE_PACKAGE}.modeling.builder')


def transformer_layers(model):
  """{layer name: layer} of the model's transformer layers."""
  return {m.name: m for m in model.submodules if type(m).__name__ == _LAYER_CLASS}


def captured_layer_inputs(model, size):
  """{layer name: (args, kwargs)} of one inference forward pass, one per shape.

  Layers whose inputs have the shapes of an earlier layer's are left out (they
  are the same computation).
  """
  captured = {}
  for name, layer in transformer_layers(model).items():
    def capture(*args, name=name, call=layer.call, **kwargs):
      captured[name] = (args, kwargs)
      return call(*args, **kwargs)
    layer.call = capture
  model(tf.random.uniform([1, size, size, 3], -1.0, 1.0), training=False)
  distinct, seen = {}, set()
  for name, (args, kwargs) in captured.items():
    shapes = tuple(None if a is None else tuple(a.shape) for a in args)
    if shapes not in seen:
      seen.add(shapes)
      distinct[name] = (args, kwargs)
  return distinct


def traced_call(layer, args, kwargs):
  """A traced call of `layer` on fixed inputs, in inference mode."""
  kwargs = dict(kwargs, training=False)
  return tf.function(lambda: layer(*args, **kwargs))


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as directory:
    baseline_builder = import_baseline_builder(_BASELINE.value, directory)
    print(f'{_SIZE.value}x{_SIZE.value} input, {_ROUNDS.value} rounds, '
          f'baseline {_BASELINE.value}\n')
    print('| model | layer | pixels | baseline (ms) | working tree (ms) | '
          'new / baseline, median of rounds (quartiles) |')
    print('|---|---|---|---|---|---|')
    for model_name in _MODELS.value:
      model = builder.build_model(model_name, _NUM_CLASSES.value)
      new_layers = transformer_layers(model)
      baseline_layers = transformer_layers(
          baseline_builder.build_model(model_name, _NUM_CLASSES.value))
      for name, (args, kwargs) in captured_layer_inputs(model, _SIZE.value).items():
        if name not in baseline_layers:
          raise ValueError(f'{model_name}: the baseline has no layer {name!r}; '
                           f'it has {sorted(baseline_layers)}.')
        timings = timing.interleaved(
            {'baseline': traced_call(baseline_layers[name], args, kwargs),
             'new': traced_call(new_layers[name], args, kwargs)},
            _ROUNDS.value)
        median, low, high = timings.ratio_summary('new', 'baseline')
        print(f'| {model_name} | {name} | {"x".join(map(str, args[0].shape[1:]))} '
              f'| {timings.median("baseline") * 1e3:.1f} '
              f'| {timings.median("new") * 1e3:.1f} '
              f'| {median:.3f} ({low:.3f}-{high:.3f}) |', flush=True)


if __name__ == '__main__':
  app.run(main)
