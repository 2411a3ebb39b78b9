r"""Benchmarks training steps/s of the real trainer on CPU, with and without XLA.

Uses the synthetic set (made under --work_dir if missing) and the project's
trainer (`train_lib.build_trainer`): data pipeline, model, PanopticLoss, AdamW.
Prints a Markdown table. The synthetic set has 8 classes, so the class heads are
smaller than COCO's; the rest of each network is the configured one.

  python scripts/bench_train.py --configs=tiny:8:129,cmt_deeplab_s:1:641
"""
import os
import time

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import synthetic
from cmt_deeplab_tf.training import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('work_dir', '/tmp/bench_train', 'Scratch folder for the data set.')
flags.DEFINE_list('configs', ['tiny:8:129', 'cmt_deeplab_s:1:641'],
                  'model:batch:crop triples.')
flags.DEFINE_list('xla', ['false', 'true'], 'XLA settings to measure.')
flags.DEFINE_integer('steps', 5, 'Timed steps per configuration (after 2 warm-up steps).')


def _records(height: int, width: int) -> str:
  root = os.path.join(FLAGS.work_dir, f'{height}x{width}')
  pattern = os.path.join(root, 'records', 'train-*')
  if not tf.io.gfile.glob(pattern):
    json_path = synthetic.write_split(root, 'train', 16,
                                      synthetic.SyntheticConfig(height, width), seed=0)
    convert_coco.convert_split('synthetic', 'train', os.path.join(root, 'train'),
                               json_path, None, os.path.join(root, 'records'),
                               num_shards=2, num_workers=1)
  return pattern


def _steps_per_second(model: str, batch: int, crop: int, xla: bool) -> float:
  gin.clear_config()
  gin.bind_parameter('build_model.name', model)
  gin.bind_parameter('build_model.num_clusters', 16 if model == 'tiny' else 128)
  gin.bind_parameter('OptimizerConfig.warmup_steps', 0)
  size = (128, 128) if crop <= 129 else (480, 640)
  config = train_lib.ExperimentConfig(
      dataset_name='synthetic', train_file_pattern=_records(*size),
      train_batch_size=batch, train_crop_size=(crop, crop),
      max_num_masks=16 if model == 'tiny' else 128, train_steps=10**6, jit_compile=xla,
      seed=0)
  trainer = train_lib.build_trainer(config, tf.distribute.get_strategy(), 'train')
  trainer.train(tf.constant(2))  # Trace / compile and warm up.
  durations = []
  for _ in range(FLAGS.steps):
    start = time.perf_counter()
    trainer.train(tf.constant(1))
    durations.append(time.perf_counter() - start)
  return 1.0 / float(np.median(durations))


def main(argv):
  del argv
  rows = []
  for spec in FLAGS.configs:
    model, batch, crop = spec.split(':')
    for xla in FLAGS.xla:
      rate = _steps_per_second(model, int(batch), int(crop), xla == 'true')
      rows.append((model, batch, crop, xla, rate))
      print(f'{model} batch {batch} crop {crop} xla={xla}: {rate:.3f} steps/s', flush=True)
  print(f'\nMachine: {os.cpu_count()} CPU cores; TensorFlow {tf.__version__}; median of '
        f'{FLAGS.steps} steps after warm-up.')
  print('| model | batch | crop | XLA | steps/s | images/s |')
  print('|---|---|---|---|---|---|')
  for model, batch, crop, xla, rate in rows:
    print(f'| {model} | {batch} | {crop}x{crop} | {xla} | {rate:.3f} | '
          f'{rate * int(batch):.2f} |')


if __name__ == '__main__':
  app.run(main)
