r"""Runs a gin ablation sweep: train + eval per point, each in its own process.

A grid (cross product of the axes):

  python -m cmt_deeplab_tf.sweep --base_gin=synthetic/demo.gin \
      --grid='ClusteringTransformerLayer.update_pixels=[True,False]' \
      --grid='ClusteringTransformerLayer.use_assignment_residual=[True,False]' \
      --sweep_dir=runs/sweep --gin_param="ExperimentConfig.train_steps=600"

Named points, one change at a time ('name:binding;binding'):

  python -m cmt_deeplab_tf.sweep --base_gin=synthetic/demo.gin \
      --points='baseline:' \
      --points='no_pixel_update:ClusteringTransformerLayer.update_pixels=False' \
      --sweep_dir=runs/sweep

Each point trains in `<sweep_dir>/<point>` (log in `<sweep_dir>/logs/<point>.log`);
running the same command again skips finished points and resumes the others.
The table (PQ, PQ^Th, PQ^St, SQ, RQ per point) goes to `<sweep_dir>/results.md`
and `results.csv`. Exits non-zero when a point failed.
"""
import os
import sys

from absl import app
from absl import flags

from cmt_deeplab_tf import config_files
from cmt_deeplab_tf.analysis import sweep


def _define_flags():
  flags.DEFINE_string('base_gin', None, 'The gin file every point starts from.')
  flags.DEFINE_multi_string('grid', [], "An axis 'Scope.param=[v1,v2]'; points are "
                            'the cross product of all axes.')
  flags.DEFINE_multi_string('points', [], "A named point 'name:binding;binding' "
                            "('baseline:' for none); instead of --grid.")
  flags.DEFINE_string('sweep_dir', None, 'One model dir per point, logs and tables.')
  flags.DEFINE_multi_string('gin_param', [], 'Bindings common to every point, applied '
                            "before the point's own.")
  flags.DEFINE_enum('mode', 'train_and_eval', sweep.MODES,
                    'Mode of the train CLI (one that writes eval results).')


def points_from_flags(grid, named):
  """The sweep's points from --grid or --points (exactly one of them)."""
  if bool(grid) == bool(named):
    raise app.UsageError('Give either --grid or --points (exactly one of them).')
  return sweep.grid_points(grid) if grid else sweep.named_points(named)


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  try:
    base_gin = os.path.abspath(config_files.resolve(FLAGS.base_gin, '--base_gin'))
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    points = points_from_flags(FLAGS.grid, FLAGS.points)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  outcomes = sweep.run_sweep(points, os.path.abspath(FLAGS.sweep_dir),
                             base_gin, FLAGS.gin_param,
                             FLAGS.mode, report=flush_print)
  print('\n' + sweep.markdown_table(outcomes))
  failed = [o for o in outcomes if o.status == sweep.FAILED]
  if failed:
    sys.exit(f'{len(failed)} of {len(outcomes)} points failed: ' +
             ', '.join(f'{o.point.name} (log {o.log_path})' for o in failed))


def flush_print(message: str) -> None:
  print(message, flush=True)


def run():
  _define_flags()
  flags.mark_flags_as_required(['base_gin', 'sweep_dir'])
  app.run(main)


if __name__ == '__main__':
  run()
