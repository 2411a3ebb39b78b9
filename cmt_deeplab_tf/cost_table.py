r"""Prints supplement Table 2 (accuracy-cost trade-off) with our configs beside it.

  python -m cmt_deeplab_tf.cost_table --models=max_deeplab_s,cmt_deeplab_s \
      [--num_classes=133 --num_clusters=128 --height=800 --width=1200 \
       --fps_runs=5 --memory=true]

Per config: inference parameters (training-only heads excluded, as the paper
counts), G multiply-adds of the inference graph at HxW, batch 1, FPS on this
device (1 / median of --fps_runs `tf.function` forwards after warm-up) and the
peak memory of one batch-1 training step with the memory policy the model's COCO
config ships (--policy; GPU: TF's peak allocation; CPU: the peak RSS increase
of a fresh process running the step). See
`cmt_deeplab_tf.analysis.cost`.
"""
import os
from typing import Tuple

from absl import app
from absl import flags

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.analysis import recompute_search
from cmt_deeplab_tf.modeling import builder


def _define_flags():
  flags.DEFINE_list('models', list(cost.PAPER_METHOD), 'Configs of `build_model`.')
  flags.DEFINE_integer('num_classes', 133, 'Classes (COCO panoptic: 133).')
  flags.DEFINE_integer('num_clusters', 128, 'Cluster centers / mask slots.')
  flags.DEFINE_integer('height', 800, 'Input height (the paper: 800).')
  flags.DEFINE_integer('width', 1200, 'Input width (the paper: 1200).')
  flags.DEFINE_integer('fps_runs', 5, 'Timed forwards for the FPS median; 0 skips FPS.')
  flags.DEFINE_bool('memory', True, 'Measure the peak memory of one training step.')
  flags.DEFINE_enum('policy', 'shipped', ['shipped', 'none'],
                    "Memory policy of the memory figure: 'shipped', the recompute policy "
                    "of the model's COCO config (gin_configs/coco/<model>.gin), or 'none'.")


def check_flags(flag_values) -> None:
  """Raises app.UsageError naming the first bad flag."""
  unknown = [m for m in flag_values.models if m not in builder.MODELS]
  if not flag_values.models or unknown:
    raise app.UsageError(f'--models={",".join(flag_values.models)}: unknown '
                         f'{unknown}; choose from {sorted(builder.MODELS)}.')
  for name in ('num_classes', 'num_clusters', 'height', 'width'):
    if getattr(flag_values, name) < 1:
      raise app.UsageError(f'--{name} must be >= 1, got {getattr(flag_values, name)}.')
  if flag_values.fps_runs < 0:
    raise app.UsageError(f'--fps_runs must be >= 0, got {flag_values.fps_runs}.')


def memory_policy(name: str, policy: str) -> Tuple[str, bool]:
  """(build_model.recompute, PanopticLoss.recompute) of the memory figure of `name`.

  Raises:
    app.UsageError: for 'shipped' when `name` has no COCO config.
  """
  if policy == 'none':
    return 'none', False
  config = f'coco/{name}.gin'
  if not config_files.find(config):
    raise app.UsageError(f'--policy=shipped: {name} has no {config}; use --policy=none.')
  _, recompute, loss_recompute = cost.shipped_policy(config)
  return recompute, loss_recompute


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  check_flags(FLAGS)
  device = cost.device_name()
  load_before = os.getloadavg()[0]
  measurements, policies = [], []
  for i, name in enumerate(FLAGS.models, 1):
    policy = memory_policy(name, FLAGS.policy)
    policies.append(f'{name}: {policy[0]!r}, loss {policy[1]}')
    measurements.append(cost.measure(name, FLAGS.num_classes, FLAGS.num_clusters,
                                     FLAGS.height, FLAGS.width, FLAGS.fps_runs,
                                     FLAGS.memory, recompute_search.bindings(*policy)))
    print(f'measured {name} ({i}/{len(FLAGS.models)})', flush=True)
  for measurement in measurements:
    if measurement.memory_error:
      print(f'\n{measurement.memory_error}', flush=True)
  print(f'\nInput {FLAGS.width}x{FLAGS.height}, batch 1, {FLAGS.num_classes} classes, '
        f'{FLAGS.num_clusters} clusters; ours on {device}. FLOPs = multiply-adds of '
        'the inference graph; memory: '
        f'{cost.GPU_PEAK if device == "GPU" else cost.CPU_PEAK_RSS}, with the memory '
        f'policy (build_model.recompute, PanopticLoss.recompute) {"; ".join(policies)}. '
        '1-minute load '
        f'average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after '
        f'({os.cpu_count()} CPUs): FPS falls on a shared machine.\n')
  print(cost.markdown_table(measurements, device))


def run():
  _define_flags()
  cli.run_main(main)


if __name__ == '__main__':
  run()
