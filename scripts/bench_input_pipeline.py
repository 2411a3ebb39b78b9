r"""Benchmarks the converter and the training input pipeline on synthetic data.

Prints a Markdown table of images/s. The converter is timed once per image size
(it writes the set the pipeline then reads); the pipeline is measured as
training reads it (random scale 0.5-1.5, crop, flip, targets with
`--max_num_masks` slots), with and without the tracking of bad records
(`data.record_errors`; replaced by a plain parallel map), with the benchmarks' harness
(`analysis.timing.interleaved`): one batch per round after `--warmup_batches`
batches that fill the prefetch and shuffle buffers; images/s = batch size /
median seconds per batch.

  python scripts/bench_input_pipeline.py --work_dir /tmp/bench_input
"""
import os
import shutil
from typing import Tuple
from unittest import mock

from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string('work_dir', '/tmp/bench_input', 'Scratch folder (deleted first).')
flags.DEFINE_integer('num_images', 64, 'Images per synthetic set.')
flags.DEFINE_integer('num_batches', 40, 'Batches timed per configuration (rounds).')
flags.DEFINE_integer('warmup_batches', 5, 'Untimed batches first.')
flags.DEFINE_integer('batch_size', 8, 'Training batch size.')
flags.DEFINE_integer('max_num_masks', 128, 'Mask slots of the targets.')
flags.DEFINE_integer('num_workers', 2, 'Converter processes.')
flags.DEFINE_list('sizes', ['480x640', '1024x1024'],
                  'Image sizes HxW (COCO-like, large); crop = larger side + 1.')



def _convert(root: str, height: int, width: int) -> float:
  """Writes a synthetic set and its TFRecords; returns converter images/s."""
  config = synthetic.SyntheticConfig(height=height, width=width)
  json_path = synthetic.write_split(root, 'train', FLAGS.num_images, config, seed=0)
  seconds = timing.median_seconds(
      lambda: convert_coco.convert_split(
          'synthetic', 'train', os.path.join(root, 'train'), json_path, None,
          os.path.join(root, 'records'), num_shards=8, num_workers=FLAGS.num_workers,
          overwrite=True),
      rounds=1, warmup=0)
  return FLAGS.num_images / seconds


def _untracked_map(dataset, fn, max_bad_fraction, deterministic):
  """`record_errors.map_records` without its tracking: a plain parallel map."""
  del max_bad_fraction
  return dataset.map(
      lambda record, seed: dict(fn(record[2], seed),
                                **{common.SKIPPED_RECORDS: tf.constant(0, tf.int64)}),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _pipeline_rates(pattern: str, crop: int) -> Tuple[float, float]:
  """Images/s of the training pipeline with and without its bad-record tracking."""
  def batches():
    return iter(pipeline.panoptic_dataset(
        pattern, dataset_info.get_dataset_info('synthetic'), is_training=True,
        batch_size=FLAGS.batch_size, crop_size=(crop, crop),
        max_num_masks=FLAGS.max_num_masks, seed=0))
  tracked = batches()
  with mock.patch.object(record_errors, 'map_records', _untracked_map):
    untracked = batches()
  timings = timing.interleaved({'tracked': lambda: next(tracked),
                                'untracked': lambda: next(untracked)},
                               FLAGS.num_batches, warmup=FLAGS.warmup_batches)
  return tuple(FLAGS.batch_size / timings.median(name)
               for name in ('tracked', 'untracked'))


def main(argv):
  del argv
  shutil.rmtree(FLAGS.work_dir, ignore_errors=True)
  rows = []
  for height, width in (timing.parse_size(size) for size in FLAGS.sizes):
    root = os.path.join(FLAGS.work_dir, f'{height}x{width}')
    crop = max(height, width) + 1
    convert_rate = _convert(root, height, width)
    rates = _pipeline_rates(os.path.join(root, 'records', 'train-*'), crop)
    rows.append((f'{height}x{width}', crop, convert_rate) + rates)
  print(f'\nMachine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}.')
  print('| images | crop | converter images/s | training pipeline images/s '
        f'(batch {FLAGS.batch_size}, median of {FLAGS.num_batches}) | the same without '
        'the bad-record tracking |')
  print('|---|---|---|---|---|')
  for name, crop, convert_rate, rate, untracked in rows:
    print(f'| {name} | {crop}x{crop} | {convert_rate:.1f} | {rate:.1f} | '
          f'{untracked:.1f} |')


if __name__ == '__main__':
  app.run(main)
