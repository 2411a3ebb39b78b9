r"""Deployment formats compared: file size, latency, and agreement / PQ on the demo set.

Every format is exported with the project's CLI (`cmt_deeplab_tf.export`, in a
subprocess with a time limit) and run through `serving.runtimes` (the runtime
`predict --model` uses): SavedModel under TensorFlow, TFLite (each
quantisation) under the TFLite interpreter, ONNX under ONNX Runtime.

1. `--demo_dir` (the output of `scripts/demo.py`): the trained tiny model on the
   synthetic val set: PQ per format, and the share of pixels whose panoptic id
   equals the SavedModel's.
2. `--models` at `--size` (random weights, COCO's 133 classes): median latency
   per image over `--rounds` calls (one 640x640 image; padding, network and
   post-processing, outputs in NumPy), timed in turns across every model and
   format, with the per-round ratio to the first model's first format, and file
   size. `--reuse_exports` times the exports already in `--work_dir` again.

Prints one Markdown table per part.

  TF_CPP_MIN_LOG_LEVEL=2 python scripts/bench_deploy.py --demo_dir=demo_output \
      --models=max_deeplab_s,cmt_deeplab_s
"""
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import export
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.evaluation import panoptic_quality
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.serving import runtimes
from cmt_deeplab_tf.serving import tflite

_DEMO_DIR = flags.DEFINE_string('demo_dir', None, 'Output dir of scripts/demo.py.')
_MODELS = flags.DEFINE_list('models', ['max_deeplab_s', 'cmt_deeplab_s'],
                            'Full-size configs to time (empty: none).')
_SIZE = flags.DEFINE_string('size', '641x641', 'Fixed input size of the timed models.')
_FORMATS = flags.DEFINE_list(
    'formats', ['saved_model', 'tflite', 'tflite_float16', 'tflite_dynamic_range',
                'tflite_full_integer', 'onnx'], 'Formats to export and run.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed calls per format.')
_TIMEOUT = flags.DEFINE_integer('conversion_timeout', 900,
                                'Seconds an export may take before it is reported as such.')
_WORK_DIR = flags.DEFINE_string('work_dir', None, 'Where exports go; default: a temp dir.')
_REUSE = flags.DEFINE_bool('reuse_exports', False,
                           'Time the exports already in --work_dir instead of exporting '
                           'again (export time then shows as -).')
_CALIBRATION = flags.DEFINE_string(
    'calibration_records', None,
    'Full-size tflite_full_integer: TFRecords to calibrate on (any images; the '
    'latency does not depend on them); without it that row reports the error.')
_NUM_CALIBRATION = flags.DEFINE_integer('num_calibration_images', 4,
                                        'Full-size tflite_full_integer: images to '
                                        'calibrate on.')


def _export(model_dir, export_dir, fmt, size=None, calibration=()):
  """Exports one format with the CLI; returns (path or None, seconds, error).

  `calibration`: extra export flags for full-integer quantisation. With
  --reuse_exports an existing export is returned with seconds None.
  """
  args = ['--format=saved_model']
  path = export_dir
  if fmt != 'saved_model':
    export_format, _, quantize = fmt.partition('_')
    quantize = quantize or tflite.NONE
    args = [f'--format={export_format}']
    if export_format == 'tflite':
      args.append(f'--quantize={quantize}')
    if quantize == tflite.FULL_INTEGER:
      args.extend(calibration)
    if size:
      args.append(f'--input_size={size}')
    path = os.path.join(export_dir, export.export_file_name(export_format, quantize))
  if _REUSE.value and os.path.exists(path):
    return path, None, ''
  start = time.time()
  try:
    result = subprocess.run(
        [sys.executable, '-m', 'cmt_deeplab_tf.export', f'--model_dir={model_dir}',
         f'--export_dir={export_dir}', *args], capture_output=True, text=True,
        timeout=_TIMEOUT.value, check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  except subprocess.TimeoutExpired:
    return None, time.time() - start, f'export over {_TIMEOUT.value} s'
  if result.returncode:
    last = [l for l in result.stderr.splitlines() if l.strip()][-1:]
    return None, time.time() - start, f'export failed: {" ".join(last)[:150]}'
  return path, time.time() - start, ''


def _seconds(seconds):
  return '-' if seconds is None else f'{seconds:.0f}'


def _size_mb(path):
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files) / 1e6
  return os.path.getsize(path) / 1e6


def demo_table(demo_dir, work_dir):
  """PQ and agreement with the SavedModel per format, on the demo's val set."""
  model_dir = os.path.join(demo_dir, 'model')
  examples = [tfrecord_format.decode_example(s) for s in tf.data.TFRecordDataset(
      sorted(tf.io.gfile.glob(os.path.join(demo_dir, 'tfrecords', 'val-*'))))]
  info = run_dir.read_class_table(model_dir)
  rows, reference = [], None
  for fmt in _FORMATS.value:
    path, seconds, error = _export(model_dir, work_dir, fmt)
    if error:
      rows.append(f'| {fmt} | {_seconds(seconds)} | | | | | {error} |')
      print(rows[-1], flush=True)
      continue
    runtime = runtimes.load_runtime(path)
    pq = panoptic_quality.PanopticQuality(info)
    predictions, times = [], []
    for example in examples:
      start = time.time()
      outputs = runtime(example['image'].numpy()[np.newaxis])
      times.append(time.time() - start)
      predictions.append(outputs[export_lib.PANOPTIC][0])
      pq.update(example['panoptic'].numpy(), predictions[-1])
    reference = reference or predictions
    agreement = np.mean([(p == r).mean() for p, r in zip(predictions, reference)])
    rows.append(f'| {fmt} | {_seconds(seconds)} | {_size_mb(path):.1f} | '
                f'{np.median(times) * 1e3:.1f} | {pq.result()["pq"]:.2f} | '
                f'{100 * agreement:.3f} | |')
    print(rows[-1], flush=True)
  return ['| format | export (s) | size (MB) | latency (ms) | PQ | '
          'pixels = SavedModel (%) | note |', '|---|---|---|---|---|---|---|'] + rows


def _untrained_run(model_dir, name, size):
  """A run dir with a random `name` model for COCO, evaluated at `size`."""
  tf.io.gfile.makedirs(model_dir)
  with open(os.path.join(model_dir, run_dir.CONFIG_FILE), 'w') as f:
    f.write(f"build_model.name = '{name}'\nExperimentConfig.dataset_name = 'coco'\n"
            f'ExperimentConfig.eval_crop_size = {size}\n')
  info = dataset_info_lib.get_dataset_info('coco')
  class_table.write_class_table(model_dir, info)
  run_dir.parse_operative_config(model_dir)
  model = builder.build_model(num_classes=builder.num_classes_for(info.num_classes))
  model(tf.zeros([1, 65, 65, 3]), training=False)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model), model_dir,
                             max_to_keep=1).save(checkpoint_number=1)


def latency_table(work_dir):
  """Latency per image and file size, per model and format, timed interleaved.

  Every format of every model is exported first; then all runtimes are timed in
  turns (`timing.interleaved`), so the ratios to the first model's SavedModel are
  measured under the same machine load.
  """
  size = export.parse_size(_SIZE.value)
  image = np.random.default_rng(0).integers(0, 256, (1, size[0] - 1, size[1] - 1, 3),
                                            np.uint8)
  calibration = []
  if _CALIBRATION.value:
    calibration = [f'--calibration_records={_CALIBRATION.value}',
                   f'--num_calibration_images={_NUM_CALIBRATION.value}']
  exported, errors = {}, {}
  for name in _MODELS.value:
    model_dir = os.path.join(work_dir, name, 'run')
    if not (_REUSE.value and tf.io.gfile.exists(model_dir)):
      _untrained_run(model_dir, name, size)
    for fmt in _FORMATS.value:
      export_dir = os.path.join(work_dir, name, 'export')
      path, seconds, error = _export(model_dir, export_dir, fmt, _SIZE.value,
                                     calibration)
      print(f'{name} {fmt}: {error or path} ({_seconds(seconds)} s)', flush=True)
      if error:
        errors[name, fmt] = (seconds, error)
      else:
        exported[name, fmt] = (path, seconds)
  loaded = {key: runtimes.load_runtime(path) for key, (path, _) in exported.items()}
  timings = timing.interleaved(
      {f'{name} {fmt}': (lambda r=runtime: r(image))
       for (name, fmt), runtime in loaded.items()}, _ROUNDS.value)
  baseline = next(iter(loaded), None)
  rows = []
  for name in _MODELS.value:
    for fmt in _FORMATS.value:
      if (name, fmt) in errors:
        seconds, error = errors[name, fmt]
        rows.append(f'| {name} | {fmt} | {_seconds(seconds)} | | | | {error} |')
        continue
      path, seconds = exported[name, fmt]
      key = f'{name} {fmt}'
      ratio, low, high = timings.ratio_summary(key, ' '.join(baseline))
      rows.append(f'| {name} | {fmt} | {_seconds(seconds)} | {_size_mb(path):.1f} | '
                  f'{timings.median(key):.3f} | {ratio:.2f} [{low:.2f}, {high:.2f}] | '
                  f'{loaded[name, fmt].name} |')
  header = (f'| model | format | export (s) | size (MB) | latency (s) | '
            f'/ {" ".join(baseline or ("-",))} [quartiles] | runtime |')
  return [header, '|---|---|---|---|---|---|---|'] + rows


def main(argv):
  del argv
  work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix='bench_deploy_')
  print(f'CPU threads: {os.cpu_count()}; exports in {work_dir}')
  tables = []
  if _DEMO_DIR.value:
    tables.append(demo_table(_DEMO_DIR.value, os.path.join(work_dir, 'demo')))
  if _MODELS.value:
    tables.append(latency_table(work_dir))
  print('\n\n'.join('\n'.join(table) for table in tables))


if __name__ == '__main__':
  app.run(main)
