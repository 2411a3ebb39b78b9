r"""The demo: the whole system on the built-in synthetic data set, on CPU.

synthetic data -> TFRecords -> train the tiny CMT-DeepLab (train_and_eval) ->
evaluate -> export a SavedModel -> predict coloured panoptic maps. Every stage runs
the project's own command line, as a user would. Prints PQ at the end and exits
non-zero if it is below the bar (60).

  python scripts/demo.py --output_dir demo_output
"""
import glob
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', 'demo_output', 'Where everything is written.')
flags.DEFINE_integer('train_steps', 800, 'Training steps of the tiny model.')
flags.DEFINE_float('pq_bar', 60.0, 'Exit non-zero when the final PQ is below this.')

_DEMO_GIN = 'synthetic/demo.gin'  # A shipped config, found by name.


def _run(stage: str, module: str, *args: str) -> None:
  start = time.time()
  print(f'\n=== {stage}: python -m {module} {" ".join(args)}', flush=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  subprocess.run([sys.executable, '-m', module, *args], check=True, env=env)
  print(f'=== {stage} done in {time.time() - start:.0f} s', flush=True)


def main(argv):
  del argv
  out = os.path.abspath(FLAGS.output_dir)
  data, records, model_dir = (os.path.join(out, d) for d in ('data', 'tfrecords', 'model'))
  export_dir, predictions = os.path.join(out, 'saved_model'), os.path.join(out, 'predictions')
  start = time.time()
  if not os.path.exists(os.path.join(data, 'annotations', 'panoptic_val.json')):
    _run('1/5 synthetic data', 'cmt_deeplab_tf.data.synthetic', f'--output_dir={data}',
         '--num_train=96', '--num_val=24', '--height=128', '--width=128', '--seed=0')
  for split in ('train', 'val'):
    if not glob.glob(os.path.join(records, f'{split}-*.tfrecord')):
      _run(f'2/5 TFRecords ({split})', 'cmt_deeplab_tf.data.convert_coco',
           '--dataset=synthetic', f'--split={split}',
           f'--image_dir={os.path.join(data, split)}',
           f'--panoptic_json={os.path.join(data, "annotations", f"panoptic_{split}.json")}',
           f'--output_dir={records}', '--num_shards=4', '--num_workers=1')
  _run('3/5 train and evaluate', 'cmt_deeplab_tf.train', '--mode=train_and_eval',
       f'--model_dir={model_dir}', f'--gin_file={_DEMO_GIN}',
       f"--gin_param=ExperimentConfig.train_file_pattern='{records}/train-*'",
       f"--gin_param=ExperimentConfig.eval_file_pattern='{records}/val-*'",
       f'--gin_param=ExperimentConfig.train_steps={FLAGS.train_steps}',
       f'--gin_param=ExperimentConfig.eval_interval={FLAGS.train_steps}')
  _run('4/5 export', 'cmt_deeplab_tf.export', f'--model_dir={model_dir}',
       f'--export_dir={export_dir}')
  _run('5/5 predict', 'cmt_deeplab_tf.predict', f'--saved_model={export_dir}',
       f'--image_dir={os.path.join(data, "val")}', f'--output_dir={predictions}')
  with open(os.path.join(model_dir, 'eval', f'results-{FLAGS.train_steps}.json')) as f:
    results = json.load(f)
  print(f'\nDemo finished in {(time.time() - start) / 60:.1f} min. Synthetic val after '
        f'{FLAGS.train_steps} steps: PQ {results["pq"]:.1f} (things {results["pq_th"]:.1f}, '
        f'stuff {results["pq_st"]:.1f}), SQ {results["sq"]:.1f}, RQ {results["rq"]:.1f}, '
        f'mIoU {results["miou"]:.1f}.')
  print(f'Outputs: {out} (TensorBoard: tensorboard --logdir {model_dir}; '
        f'predictions in {predictions}).')
  if results['pq'] < FLAGS.pq_bar:
    sys.exit(f'PQ {results["pq"]:.1f} is below the demo bar {FLAGS.pq_bar}.')


if __name__ == '__main__':
  app.run(main)
