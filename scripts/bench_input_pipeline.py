r"""Benchmarks the converter and the training input pipeline on synthetic data.

Prints a Markdown table of images/s. The pipeline is measured as training reads it
(random scale 0.5-1.5, crop, flip, targets with 128 slots), batch 8.

  python scripts/bench_input_pipeline.py --work_dir /tmp/bench_input
"""
import os
import shutil
import time

from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string('work_dir', '/tmp/bench_input', 'Scratch folder (deleted first).')
flags.DEFINE_integer('num_images', 64, 'Images per synthetic set.')
flags.DEFINE_integer('num_batches', 40, 'Batches timed per configuration.')
flags.DEFINE_integer('num_workers', 2, 'Converter processes.')

# (name, image height, image width, crop size): COCO-sized and Cityscapes-like images.
_CASES = (('coco-like 640x480', 480, 640, 641), ('large 1024x1024', 1024, 1024, 1025))


def _make_records(root: str, height: int, width: int):
  config = synthetic.SyntheticConfig(height=height, width=width)
  json_path = synthetic.write_split(root, 'train', FLAGS.num_images, config, seed=0)
  start = time.perf_counter()
  convert_coco.convert_split('synthetic', 'train', os.path.join(root, 'train'), json_path,
                             None, os.path.join(root, 'records'), num_shards=8,
                             num_workers=FLAGS.num_workers)
  return FLAGS.num_images / (time.perf_counter() - start)


def _pipeline_rate(pattern: str, crop: int, batch_size: int = 8) -> float:
  dataset = pipeline.panoptic_dataset(pattern, dataset_info.get_dataset_info('synthetic'), is_training=True,
                                      batch_size=batch_size, crop_size=(crop, crop),
                                      max_num_masks=128, seed=0)
  iterator = iter(dataset)
  for _ in range(5):  # Warm-up: fill the prefetch and shuffle buffers.
    next(iterator)
  start = time.perf_counter()
  for _ in range(FLAGS.num_batches):
    next(iterator)
  return FLAGS.num_batches * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  shutil.rmtree(FLAGS.work_dir, ignore_errors=True)
  rows = []
  for name, height, width, crop in _CASES:
    root = os.path.join(FLAGS.work_dir, f'{height}x{width}')
    convert_rate = _make_records(root, height, width)
    rate = _pipeline_rate(os.path.join(root, 'records', 'train-*'), crop)
    rows.append((name, crop, convert_rate, rate))
  print(f'\nMachine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}.')
  print('| images | crop | converter images/s | training pipeline images/s (batch 8) |')
  print('|---|---|---|---|')
  for name, crop, convert_rate, rate in rows:
    print(f'| {name} | {crop}x{crop} | {convert_rate:.1f} | {rate:.1f} |')


if __name__ == '__main__':
  app.run(main)
