r"""Exports a training run as a SavedModel, a TFLite or an ONNX file.

  python -m cmt_deeplab_tf.export --model_dir=runs/cmt_s --export_dir=exported/cmt_s \
      [--checkpoint=runs/cmt_s/ckpt-50000] [--input_type=image_bytes]
  python -m cmt_deeplab_tf.export --model_dir=runs/cmt_s --export_dir=exported/cmt_s \
      --format=tflite [--quantize=float16] [--input_size=641x641]
  python -m cmt_deeplab_tf.export --model_dir=runs/cmt_s --export_dir=exported/cmt_s \
      --format=onnx [--input_size=641x641]

The model and post-processing come from `<model_dir>/operative_config.gin`, the
weights from the latest (or the given) checkpoint.

--format=saved_model (default): a SavedModel in --export_dir whose
`serving_default` takes --input_type (image_tensor: uint8 [B, H, W, 3] of any
size; image_bytes: encoded images; tf_example: serialized tf.Examples). Repeat
--input_type to add signatures named after each type. It loads with plain
TensorFlow, without this package:

  serve = tf.saved_model.load(export_dir).signatures['serving_default']
  outputs = serve(images=uint8_batch)   # [B, H, W, 3]
  outputs['panoptic'], outputs['semantic'], outputs['instance']   # int32 [B, H, W]
  outputs['segment_panoptic_ids'], outputs['segment_classes']     # int32 [B, N]
  outputs['segment_scores']                                       # float32 [B, N]

--format=tflite writes `<export_dir>/model.tflite` (`model_<quantize>.tflite`
when quantised), --format=onnx `<export_dir>/model.onnx`: the network at a fixed
input size (default: the run's evaluation crop size; larger images are refused
at prediction), with class table and post-processing settings as metadata.
`cmt_deeplab_tf.predict --model=FILE` runs them (see `serving.runtimes`).

See `cmt_deeplab_tf.serving.export_lib`, `.tflite` and `.onnx` for the contracts.
"""
import os

from absl import flags
from absl import logging
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.serving import onnx as onnx_export
from cmt_deeplab_tf.serving import tflite

SAVED_MODEL, TFLITE, ONNX = 'saved_model', 'tflite', 'onnx'


def _define_flags():
  flags.DEFINE_string('model_dir', None, 'Model dir of a training run.')
  flags.DEFINE_string('export_dir', None,
                      'Where to write the SavedModel (or the .tflite / .onnx file).')
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint prefix to export; default: the latest in --model_dir.')
  flags.DEFINE_enum('format', SAVED_MODEL, (SAVED_MODEL, TFLITE, ONNX), 'Export format.')
  flags.DEFINE_multi_enum('input_type', [export_lib.IMAGE_TENSOR], export_lib.INPUT_TYPES,
                          'SavedModel input; the first is serving_default, each also a '
                          'signature of its name.')
  flags.DEFINE_enum('quantize', tflite.NONE, tflite.QUANTIZATIONS,
                    'TFLite quantisation.')
  flags.DEFINE_string('input_size', None,
                      'TFLite / ONNX: fixed HEIGHTxWIDTH (32k + 1 each); default: the '
                      'run\'s eval crop size.')
  flags.DEFINE_string('calibration_records', None,
                      'full_integer: TFRecords to calibrate on; default: the run\'s '
                      'eval records.')
  flags.DEFINE_integer('num_calibration_images', 32,
                       'full_integer: how many images to calibrate on.')


def parse_size(text):
  """'129x161' -> (129, 161); None -> None."""
  if text is None:
    return None
  try:
    height, width = (int(part) for part in text.lower().split('x'))
  except ValueError as e:
    raise ValueError(f'--input_size={text} is not HEIGHTxWIDTH, e.g. 641x641.') from e
  export_lib.check_input_size((height, width))
  return height, width


def export_file_name(export_format: str, quantize: str = tflite.NONE) -> str:
  """model.onnx, model.tflite or model_<quantize>.tflite."""
  if export_format == ONNX:
    return 'model.onnx'
  return 'model.tflite' if quantize == tflite.NONE else f'model_{quantize}.tflite'


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.format == SAVED_MODEL:
    export_lib.export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint,
                      FLAGS.input_type)
    logging.info('Exported %s to %s (serving_default takes %s).', FLAGS.model_dir,
                 FLAGS.export_dir, FLAGS.input_type[0])
    return
  input_size = parse_size(FLAGS.input_size)
  tf.io.gfile.makedirs(FLAGS.export_dir)
  path = os.path.join(FLAGS.export_dir, export_file_name(FLAGS.format, FLAGS.quantize))
  if FLAGS.format == TFLITE:
    tflite.export(FLAGS.model_dir, path, FLAGS.checkpoint, input_size, FLAGS.quantize,
                  FLAGS.calibration_records, FLAGS.num_calibration_images)
  else:
    onnx_export.export(FLAGS.model_dir, path, FLAGS.checkpoint, input_size)
  logging.info('Exported %s to %s.', FLAGS.model_dir, path)
  print(path)


def run():
  _define_flags()
  flags.mark_flags_as_required(['model_dir', 'export_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
