"""Throughput of the panoptic evaluator and submission writers, as a Markdown table.

Synthetic images at COCO size (640x480) and Cityscapes size (1024x2048) with
about 40 segments each (10 stuff bands, 30 thing rectangles, 2% void); the
prediction shifts every segment by a few pixels and relabels some. Compares
with tf-models-official's numpy PanopticQuality on the same maps. A second table
times the bootstrap interval of PQ (`bootstrap.pq_interval`, 1000 resamples) at
the val-set sizes of COCO and Cityscapes. The
benchmarks' harness (`analysis.timing.interleaved`) gives every candidate the
same image in each round (one image per round), so all meet the same load.

  TF_CPP_MIN_LOG_LEVEL=2 .venv/bin/python scripts/bench_evaluator.py
"""
import itertools
import tempfile

from absl import app
from absl import flags
import numpy as np

from cmt_deeplab_tf import common
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import bootstrap
from cmt_deeplab_tf.evaluation import mean_iou
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.evaluation import panoptic_quality
from cmt_deeplab_tf.evaluation import submission

_NUM_IMAGES = flags.DEFINE_integer('num_images', 10, 'Timed images (rounds).')
_INTERVAL_IMAGES = flags.DEFINE_list('interval_images', ['coco:5000', 'cityscapes:500'],
                                      'dataset:images of the bootstrap interval rows.')
_SIZES = flags.DEFINE_list('sizes', ['coco:480x640', 'cityscapes:1024x2048'],
                           'dataset:HxW image sizes.')
_WRITERS = {'coco': submission.CocoPanopticWriter,
            'cityscapes': submission.CityscapesPanopticWriter}


def _random_pair(rng, info, height, width, num_stuff=10, num_things=30):
  """(gt, pred) int32 [H, W] panoptic maps with about 40 segments."""
  divisor = info.label_divisor
  gt = np.empty((height, width), np.int64)
  cuts = np.linspace(0, height, num_stuff + 1).astype(int)
  for start, stop, cls in zip(cuts[:-1], cuts[1:],
                              rng.choice(info.stuff_ids, num_stuff)):
    gt[start:stop] = cls * divisor
  for instance, cls in enumerate(rng.choice(info.thing_ids, num_things), start=1):
    y, x = rng.integers(0, height - height // 6), rng.integers(0, width - width // 6)
    h, w = rng.integers(height // 20, height // 6), rng.integers(width // 20, width // 6)
    gt[y:y + h, x:x + w] = cls * divisor + instance
  pred = np.roll(gt, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
  relabel = np.isin(pred, rng.choice(np.unique(pred), 5))
  pred[relabel] = rng.choice(info.stuff_ids) * divisor
  gt[rng.random(gt.shape) < 0.02] = info.ignore_label * divisor
  return gt.astype(np.int32), pred.astype(np.int32)


def _tfm_update(info):
  from official.vision.evaluation import panoptic_quality as tfm_pq  # pylint: disable=g-import-not-at-top
  metric = tfm_pq.PanopticQuality(
      num_categories=info.num_classes + 1, ignored_label=info.num_classes,
      max_instances_per_category=info.label_divisor,
      offset=(info.num_classes + 1) * info.label_divisor)

  def update(gt, pred):
    masks = lambda p: {'category_mask': np.minimum(p // info.label_divisor,
                                                    info.num_classes),
                       'instance_mask': p % info.label_divisor}
    metric.compare_and_accumulate(masks(gt), masks(pred))
  return update


def _each_image(update, pairs):
  """A call without arguments that updates with the next pair, cycling."""
  cycle = itertools.cycle(pairs)
  return lambda: update(*next(cycle))


def parse_size(text):
  """'coco:480x640' -> ('coco', 480, 640); a clear error naming the flag."""
  name, _, size = text.partition(':')
  height, width = timing.parse_size(size, '--sizes (dataset:HxW)')
  if name not in _WRITERS:
    raise ValueError(f'--sizes: unknown dataset {name!r}; one of {sorted(_WRITERS)}.')
  return name, height, width


def _evaluator_update(info):
  evaluator = panoptic_evaluator.PanopticEvaluator(info)

  def update(gt, pred):
    divisor = info.label_divisor
    evaluator.update({common.PANOPTIC: gt, common.SEMANTIC: gt // divisor},
                     {common.PANOPTIC_PRED: pred, common.SEMANTIC_PRED: pred // divisor})
  return update


def _writer_update(writer_class, info, output_dir):
  writer = writer_class(output_dir, info)
  counter = iter(range(10**9))
  return lambda gt, pred: writer.add(next(counter), pred)


def main(_):
  rng = np.random.default_rng(0)
  rows = []
  with tempfile.TemporaryDirectory() as output_dir:
    for name, height, width in (parse_size(size) for size in _SIZES.value):
      writer_class = _WRITERS[name]
      info = dataset_info_lib.get_dataset_info(name)
      # One more pair than rounds: the warm-up takes the first.
      pairs = [_random_pair(rng, info, height, width)
               for _ in range(_NUM_IMAGES.value + 1)]
      pq = panoptic_quality.PanopticQuality(info)
      miou = mean_iou.MeanIoU(info)
      candidates = {
          'PanopticQuality.update (ours)': pq.update,
          'MeanIoU.update (ours)': lambda g, p, m=miou, d=info.label_divisor: m.update(g // d, p // d),
          'PanopticEvaluator.update (PQ + mIoU)': _evaluator_update(info),
          'tf-models-official numpy PanopticQuality': _tfm_update(info),
          f'{writer_class.__name__}.add (PNG + record)': _writer_update(
              writer_class, info, f'{output_dir}/{name}'),
      }
      timings = timing.interleaved(
          {label: _each_image(update, pairs) for label, update in candidates.items()},
          _NUM_IMAGES.value)
      segments = np.mean([np.unique(g).size for g, _ in pairs])
      for label in candidates:
        rows.append((f'{name} {height}x{width}', f'{segments:.0f}', label,
                     1.0 / timings.median(label)))
  print('| image size | segments / image | what | images / s (median) |')
  print('|---|---|---|---|')
  for size, segments, label, speed in rows:
    print(f'| {size} | {segments} | {label} | {speed:.1f} |')
  print('\n| data set | images | classes | bootstrap interval of PQ, 1000 resamples (s) |')
  print('|---|---|---|---|')
  for spec in _INTERVAL_IMAGES.value:
    name, _, count = spec.partition(':')
    info = dataset_info_lib.get_dataset_info(name)
    per_image = rng.integers(0, 4, (int(count), 4, info.num_classes)).astype(np.float64)
    timings = timing.interleaved({'interval': lambda: bootstrap.pq_interval(per_image)}, 3)
    print(f'| {name} | {count} | {info.num_classes} | {timings.median("interval"):.3f} |')


if __name__ == '__main__':
  app.run(main)
