"""Per-component CPU time of a model's inference graph or training step.

Runs `model(images, training=False)` (a `modeling.builder` config) in a
`tf.function` (batch 1, float32), or with `--step=forward_backward` the
training step without its update (forward pass in training mode, PanopticLoss on
the memory probe's random label, gradients; `analysis.cost.forward_backward_step`,
under the `--recompute` policy), warms it up twice, then records `--runs` calls
(timed by the benchmarks' harness, `analysis.timing`) with the TensorFlow
profiler and sums the time of every
graph op by the component its name scope belongs to: backbone, pixel-decoder
blocks, each transformer layer (by location and pixel stride) and its sublayers,
heads, and the model-level ops (e.g. reference-mask outputs); a gradient op
counts to the component of the op it differentiates, a recomputed layer's rerun
to that layer's, the loss's ops to 'loss'.
Multiply-adds per component come from the traced graph (`flop_count`), so each
row also shows its achieved GFLOP/s. By default ops run one at a time (`--inter_op_threads=1`,
each op still uses all cores), so the op times add up to about the wall time;
with inter-op parallelism concurrent ops inflate each other's times.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/profile_model.py \
      --model=cmt_deeplab_s --size=800x1200
  TF_CPP_MIN_LOG_LEVEL=2 python scripts/profile_model.py \
      --model=cmt_deeplab_s --size=641x641 --step=forward_backward --recompute=none
"""
import collections
import glob
import re
import tempfile

from absl import app
from absl import flags
import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import flop_count

_MODEL = flags.DEFINE_string('model', 'cmt_deeplab_s',
                             f'Config to profile, of {sorted(builder.MODELS)}.')
_SIZE = flags.DEFINE_string('size', '800x1200', 'Input size HxW.')
_RUNS = flags.DEFINE_integer('runs', 2, 'Profiled calls (after 2 warm-ups).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO: 133.')
_XLA = flags.DEFINE_bool('xla', False, 'jit_compile (op names are lost).')
_TOP_OPS = flags.DEFINE_integer('top_ops', 12, 'Op types listed per group.')
_LIST_OPS = flags.DEFINE_string(
    'list_ops', None, 'Also list every op (> 1 ms) whose name contains this.')
_STEP = flags.DEFINE_enum('step', 'inference', ['inference', 'forward_backward'],
                          'What to profile: the inference forward pass, or the '
                          'training step without its update.')
_RECOMPUTE = flags.DEFINE_string(
    'recompute', 'none', "Memory policy of --step=forward_backward: 'none', "
    "'all' or comma-separated parts (`build_model.recompute`).")
_NUM_CLUSTERS = flags.DEFINE_integer('num_clusters', 128,
                                     'Mask slots of --step=forward_backward.')
_INTER_OP = flags.DEFINE_integer(
    'inter_op_threads', 1, 'Inter-op threads; 1 runs ops one at a time, so '
    'op times add up to the wall time (0: TensorFlow default).')

_LAYER = re.compile(r'(?:^|/)((?:decoder|backbone)_stage(\d)_block(\d+))/([^/]+)')
_GRADIENT_SCOPE = 'gradient_tape'
_STRIDES = {'decoder': (16, 8, 4), 'backbone': (16, 16, 16, 16)}
_HEAD_SCOPES = ('heads', 'pixel_embedding_head', 'semantic_head')
# A recomputed layer's rerun (`tf.recompute_grad`) names its ops from the layer's
# own scope, without the model's: the layer names of the recompute parts.
# (pattern of the layer's name, its group with {} for the name).
_RERUN_SCOPES = ((re.compile(r'stem|stage\d_block\d+'), 'backbone'),
                 (re.compile(r'stride\d+_(?:block\d+|fuse)'), 'decoder {}'),
                 (re.compile('|'.join(_HEAD_SCOPES)), 'heads'))


def component(op_name, model_name):
  """(group, detail) of a graph op name, e.g. ('cmt s4 decoder_stage2_block0',
  'clustering'); a gradient op's is that of the op it differentiates. An op
  outside `model_name`'s scope belongs to a recomputed layer's rerun when its
  top scope is that layer's name, else to the loss."""
  match = _LAYER.search(op_name)
  if match:
    location, stage, _, sublayer = match.groups()
    stride = _STRIDES[location.split('_')[0]][int(stage)]
    return f'transformer s{stride} {location}', sublayer
  parts = op_name.split('/')
  if parts[0] == _GRADIENT_SCOPE:
    parts = parts[1:]
  if parts[0] != model_name:
    return _outside_model_scope(parts[0])
  if len(parts) < 3:
    return 'model-level ops', parts[-1].split('_')[0]
  scope = parts[1]
  if scope == 'pixel_decoder':
    # An op directly in the decoder's scope (activations and identities between
    # its blocks) is no block of its own.
    block = parts[2] if len(parts) > 3 else 'between blocks'
    return f'decoder {block}', block
  if scope in _HEAD_SCOPES:
    return 'heads', scope
  return 'backbone', scope


def _outside_model_scope(scope):
  """(group, detail) of an op whose top scope is not the model's: a
  recomputed layer's rerun, else the loss."""
  for pattern, group in _RERUN_SCOPES:
    if pattern.fullmatch(scope):
      return group.format(scope), scope
  return 'loss', scope.rstrip('_0123456789')


def op_times(logdir):
  """{op name: (op type, summed picoseconds)} from the newest xplane."""
  path = sorted(glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  times = collections.defaultdict(int)
  types = {}
  for plane in space.planes:
    if plane.name != '/host:CPU':
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ':' not in name or name.count(':') != 1 or '::' in name:
          continue
        op_name, op_type = (part.strip() for part in name.split(':'))
        if not op_name or op_type.startswith('__'):  # The tf.function call itself.
          continue
        times[op_name] += event.duration_ps
        types[op_name] = op_type
  return {name: (types[name], ps) for name, ps in times.items()}


def _profiled_call(height, width):
  """(tf.function, its input, the model's name scope) of `--step`."""
  if _STEP.value == 'inference':
    model = builder.build_model(_MODEL.value, _NUM_CLASSES.value)
    return (tf.function(lambda x: model(x, training=False),
                        jit_compile=_XLA.value, autograph=False),
            tf.random.uniform([1, height, width, 3], -1.0, 1.0), model.name)
  model = cost.build(_MODEL.value, _NUM_CLASSES.value, _NUM_CLUSTERS.value)
  builder.set_recompute(model, _RECOMPUTE.value)
  loss_fn = panoptic_loss.PanopticLoss(num_classes=_NUM_CLASSES.value,
                                       global_batch_size=1)
  step = cost.forward_backward_step(model, loss_fn, jit_compile=_XLA.value)
  return step, cost.random_training_batch(height, width, _NUM_CLASSES.value,
                                          _NUM_CLUSTERS.value), model.name


def main(argv):
  del argv
  if _INTER_OP.value:
    tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP.value)
  height, width = (int(v) for v in _SIZE.value.split('x'))
  function, inputs, model_name = _profiled_call(height, width)
  graph = function.get_concrete_function(inputs).graph
  macs = collections.defaultdict(int)
  for op in graph.get_operations():
    count = flop_count._op_multiply_adds(op)  # pylint: disable=protected-access
    if count:
      macs[component(op.name, model_name)[0]] += count
  logdir = tempfile.mkdtemp(prefix='profile_model_')
  wall = timing.interleaved(
      {'model': lambda: function(inputs)}, _RUNS.value, warmup=2,
      after_warmup=lambda: tf.profiler.experimental.start(logdir)).median('model')
  tf.profiler.experimental.stop()
  runs = _RUNS.value
  groups = collections.defaultdict(float)
  details = collections.defaultdict(float)
  by_type = collections.defaultdict(lambda: collections.defaultdict(float))
  times = op_times(logdir)
  for name, (op_type, ps) in times.items():
    group, detail = component(name, model_name)
    seconds = ps * 1e-12 / runs
    groups[group] += seconds
    details[(group, detail)] += seconds
    kind = group.split(' ')[0] + (' ' + group.split(' ')[1]
                                  if group.startswith('transformer') else '')
    by_type[kind][op_type] += seconds
  total = sum(groups.values())
  print(f'{_MODEL.value} {_SIZE.value}: wall {wall:.2f} s '
        f'(profiled), op time summed {total:.2f} s, '
        f'{sum(macs.values()) / 1e9:.1f} GMACs')
  print('\n| component | op time (s) | share | GMACs | GFLOP/s |')
  print('|---|---|---|---|---|')
  for group, seconds in sorted(groups.items()):
    gflops = 2 * macs[group] / seconds / 1e9 if seconds else 0
    print(f'| {group} | {seconds:.3f} | {seconds / total:.1%} | '
          f'{macs[group] / 1e9:.2f} | {gflops:.0f} |')
  print('\nTransformer sublayers (op time, s):')
  for (group, detail), seconds in sorted(details.items()):
    if group.startswith('transformer') and seconds > 0.002:
      print(f'  {group:40s} {detail:28s} {seconds:.3f}')
  if _LIST_OPS.value:
    print(f'\nOps matching {_LIST_OPS.value!r} (s):')
    for name, (op_type, ps) in sorted(times.items(), key=lambda kv: -kv[1][1]):
      if _LIST_OPS.value in name and ps / runs > 1e9:
        print(f'  {ps * 1e-12 / runs:.4f} {op_type:28s} {name}')
  print('\nOp types by group (s):')
  for kind, types in sorted(by_type.items()):
    top = sorted(types.items(), key=lambda kv: -kv[1])[:_TOP_OPS.value]
    print(f'  {kind}: ' + ', '.join(f'{t} {s:.3f}' for t, s in top))


if __name__ == '__main__':
  app.run(main)
