"""TFLite export: the network at a fixed input size, with TFLite's built-in ops.

The file holds the network alone (`export_lib.network_function`): input `image`
float32 [1, H', W', 3] (padded, normalised), outputs CLASS_LOGITS [1, N, C + 1]
and MASK_LOGITS [1, h, w, N]. With a fixed size every op converts to a TFLite
built-in (no Flex delegate needed); with a dynamic size the converter needs
SELECT_TF_OPS. Padding and post-processing run in NumPy
(`serving.runtimes`). The `export_lib.deployment_metadata` (class table,
post-processing settings, input size) is stored as JSON in the flatbuffer's
metadata under `METADATA_NAME`.

Quantisations (`QUANTIZATIONS`):
  none           float32 weights and activations.
  float16        float16 weights, float32 compute.
  dynamic_range  int8 weights, activations quantised on the fly.
  full_integer   int8 weights and activations, calibrated on images of the run's
                 evaluation records; input and output stay float32.
"""
import glob
import json
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.training import experiment

METADATA_NAME = 'cmt_deeplab_tf'
NONE = 'none'
FLOAT16 = 'float16'
DYNAMIC_RANGE = 'dynamic_range'
FULL_INTEGER = 'full_integer'
QUANTIZATIONS = (NONE, FLOAT16, DYNAMIC_RANGE, FULL_INTEGER)


def calibration_images(file_pattern: str, input_size: Tuple[int, int],
                       num_images: int) -> List[np.ndarray]:
  """Up to num_images padded images [1, H', W', 3] of the records, smaller than H' x W'.

  Raises:
    ValueError: if the pattern matches no file, or no image fits.
  """
  files = sorted(glob.glob(file_pattern))
  if not files:
    raise ValueError(f'Calibration records {file_pattern!r} match no file (full_integer '
                     'quantisation calibrates on the run\'s evaluation records; pass '
                     '--calibration_records).')
  images = []
  for serialized in tf.data.TFRecordDataset(files):
    image = tfrecord_format.decode_example(serialized)['image']
    if image.shape[0] <= input_size[0] and image.shape[1] <= input_size[1]:
      images.append(export_lib.pad_images(image[tf.newaxis], input_size).numpy())
    if len(images) == num_images:
      break
  if not images:
    raise ValueError(f'No image of {file_pattern!r} fits the input size {input_size}.')
  return images


def convert(network: tf.types.experimental.GenericFunction, quantize: str = NONE,
            representative_images: Optional[List[np.ndarray]] = None) -> bytes:
  """Converts a `network_function` to a TFLite flatbuffer.

  Raises:
    ValueError: for an unknown quantisation, or when the converter refuses it.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f'--quantize={quantize} is not one of {QUANTIZATIONS}.')
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [network.get_concrete_function()])
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize != NONE:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == FLOAT16:
    converter.target_spec.supported_types = [tf.float16]
  if quantize == FULL_INTEGER:
    if not representative_images:
      raise ValueError('full_integer quantisation needs representative images.')
    converter.representative_dataset = lambda: ([image] for image in representative_images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  try:
    return converter.convert()
  except Exception as e:  # The converter raises ConverterError and others.
    raise ValueError(f'The TFLite converter refuses --quantize={quantize}: '
                     f'{str(e)[-1500:]}') from e


def add_metadata(flatbuffer: bytes, metadata: Dict[str, object]) -> bytes:
  """The flatbuffer with `metadata` as JSON under METADATA_NAME."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
  model.buffers.append(buffer)
  entry = schema.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(model.buffers) - 1
  model.metadata = (model.metadata or []) + [entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(flatbuffer: bytes, source: str) -> Dict[str, object]:
  """The metadata `add_metadata` stored; errors name `source`."""
  model = schema.Model.GetRootAs(flatbuffer, 0)
  for i in range(model.MetadataLength()):
    entry = model.Metadata(i)
    if entry.Name().decode() == METADATA_NAME:
      return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
  raise ValueError(f'{source} has no {METADATA_NAME} metadata; export it with '
                   'cmt_deeplab_tf.export --format=tflite.')


def export(model_dir: str, output_path: str, checkpoint: Optional[str] = None,
           input_size: Optional[Tuple[int, int]] = None, quantize: str = NONE,
           calibration_records: Optional[str] = None,
           num_calibration_images: int = 32) -> None:
  """Exports a training run as a TFLite file (see the module docstring).

  Args:
    model_dir: the `--model_dir` of a training run.
    output_path: the .tflite file to write.
    checkpoint: a checkpoint prefix; default: the latest one in model_dir.
    input_size: the fixed (H', W'); default: the run's evaluation crop size.
    quantize: one of QUANTIZATIONS.
    calibration_records: full_integer only: TFRecords to calibrate on; default:
      the run's evaluation records.
    num_calibration_images: full_integer only: how many images.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f'--quantize={quantize} is not one of {QUANTIZATIONS}.')
  network, metadata = export_lib.load_network(model_dir, checkpoint, input_size)
  images = None
  if quantize == FULL_INTEGER:
    pattern = calibration_records or experiment.ExperimentConfig().eval_file_pattern
    if not pattern:
      raise ValueError(f'--model_dir={model_dir} has no eval_file_pattern; pass '
                       '--calibration_records for full_integer quantisation.')
    images = calibration_images(pattern, tuple(metadata['input_size']),
                                num_calibration_images)
  flatbuffer = add_metadata(convert(network, quantize, images), metadata)
  with tf.io.gfile.GFile(output_path, 'wb') as f:
    f.write(flatbuffer)

