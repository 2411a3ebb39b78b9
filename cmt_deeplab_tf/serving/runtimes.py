"""One interface over the exported formats, each run by its own runtime.

`load_runtime(path)` returns a `Runtime`: uint8 images [B, H, W, 3] -> NumPy
arrays under `export_lib.OUTPUT_NAMES`, plus the model's class table:

  SavedModel folder  TensorFlow, the in-graph post-processing; any input type
                     (images are handed to an `image_bytes` or `tf_example`
                     signature as lossless PNGs).
  .tflite            the TFLite interpreter (ai-edge-litert), and
  .onnx              ONNX Runtime: the network at its fixed input size, images
                     padded by `pad_image` and post-processed by
                     `ops.post_processing_numpy`, one image per call.
  run dir            (`CheckpointRuntime`) the training checkpoint under TF.
"""
import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.ops import post_processing_numpy
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.serving import tflite

Outputs = Dict[str, np.ndarray]


def pad_image(image: np.ndarray, size) -> np.ndarray:
  """`export_lib.pad_images` in NumPy: uint8 [H, W, 3] -> float32 [1, H', W', 3].

  Raises:
    ValueError: if the image is larger than `size`.
  """
  height, width = image.shape[:2]
  if height > size[0] or width > size[1]:
    raise ValueError(f'the image is {height}x{width}, larger than the model\'s fixed '
                     f'input size {size[0]}x{size[1]} (export with a larger --input_size)')
  padded = np.zeros((1, *size, 3), np.float32)
  padded[0, :height, :width] = (image.astype(np.float32) / np.float32(augment.MEAN_PIXEL)
                                - np.float32(1.0))
  return padded


def serving_outputs(predictions: Outputs, label_divisor: int) -> Outputs:
  """Post-processor predictions (NumPy) -> the serving signature's outputs."""
  segment_ids = predictions[common.SEGMENT_PANOPTIC_IDS]
  return {
      export_lib.PANOPTIC: predictions[common.PANOPTIC_PRED],
      export_lib.SEMANTIC: predictions[common.SEMANTIC_PRED],
      export_lib.INSTANCE: predictions[common.INSTANCE_PRED],
      export_lib.SEGMENT_PANOPTIC_IDS: segment_ids,
      export_lib.SEGMENT_CLASSES: np.where(segment_ids >= 0,
                                           segment_ids // label_divisor, -1),
      export_lib.SEGMENT_SCORES: predictions[common.SEGMENT_SCORES],
  }


class Runtime:
  """images uint8 [B, H, W, 3] -> outputs; `info` is the model's class table."""

  name = ''
  info: dataset_info_lib.DatasetInfo

  def __call__(self, images: np.ndarray) -> Outputs:
    raise NotImplementedError


class _TensorFlowRuntime(Runtime):
  """Runs a serving `tf.function` (or signature) of the `images` input."""

  name = 'TensorFlow'

  def __init__(self, serve, info):
    self._serve = serve
    self.info = info

  def __call__(self, images):
    return {k: v.numpy() for k, v in self._serve(images=tf.constant(images)).items()}


def _png_strings(images: np.ndarray) -> tf.Tensor:
  return tf.constant([panoptic_format.encode_png(image) for image in images])


def _examples(images: np.ndarray) -> tf.Tensor:
  """Serialized examples holding the images as PNGs under image/encoded."""
  return tf.constant([tf.train.Example(features=tf.train.Features(feature={
      tfrecord_format.IMAGE_ENCODED: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[panoptic_format.encode_png(image)]))
  })).SerializeToString() for image in images])


class SavedModelRuntime(Runtime):
  """A SavedModel's `serving_default`, of whichever input type it was exported with."""

  name = 'TensorFlow (SavedModel)'

  def __init__(self, path: str):
    if not tf.saved_model.contains_saved_model(path):
      raise ValueError(f'--model={path} holds no SavedModel.')
    self._loaded = tf.saved_model.load(path)  # Owns the signature's variables.
    self._signature = self._loaded.signatures[export_lib.SIGNATURE_NAME]
    [self._input_name] = self._signature.structured_input_signature[1]
    self.info = export_lib.class_table_from_saved_model(self._loaded)

  def __call__(self, images):
    encode = {export_lib.INPUT_IMAGES: tf.constant, export_lib.IMAGE_BYTES: _png_strings,
              export_lib.TF_EXAMPLE: _examples}[self._input_name]
    outputs = self._signature(**{self._input_name: encode(images)})
    return {key: value.numpy() for key, value in outputs.items()}


def _logits_name(shape) -> str:
  """Converters rename the network's outputs: class logits are the rank-3 one."""
  return common.CLASS_LOGITS if len(shape) == 3 else common.MASK_LOGITS


class _NetworkRuntime(Runtime):
  """The network in another runtime; padding and post-processing in NumPy."""

  def __init__(self, metadata: Dict[str, object], source: str):
    self.info = dataset_info_lib.from_json(metadata['class_table'], source)
    self.input_size = tuple(metadata['input_size'])
    self._post_processor = post_processing_numpy.PostProcessor(
        self.info.is_thing, self.info.label_divisor, **metadata['post_processing'])

  def network(self, image: np.ndarray) -> Outputs:
    """float32 [1, H', W', 3] -> CLASS_LOGITS and MASK_LOGITS."""
    raise NotImplementedError

  def __call__(self, images):
    per_image = []
    for image in images:
      logits = self.network(pad_image(image, self.input_size))
      per_image.append(self._post_processor(logits, image.shape[:2]))
    predictions = {key: np.concatenate([p[key] for p in per_image])
                   for key in per_image[0]}
    return serving_outputs(predictions, self.info.label_divisor)


class TFLiteRuntime(_NetworkRuntime):
  """A .tflite file of `serving.tflite`, run by the TFLite interpreter."""

  name = 'TFLite'

  def __init__(self, path: str):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    with tf.io.gfile.GFile(path, 'rb') as f:
      flatbuffer = f.read()
    super().__init__(tflite.read_metadata(flatbuffer, path), path)
    self._interpreter = litert.Interpreter(model_content=flatbuffer,
                                           num_threads=os.cpu_count())
    self._interpreter.allocate_tensors()
    [self._input] = self._interpreter.get_input_details()
    self._outputs = {_logits_name(d['shape']): d['index']
                     for d in self._interpreter.get_output_details()}

  def network(self, image):
    self._interpreter.set_tensor(self._input['index'], image)
    self._interpreter.invoke()
    return {key: self._interpreter.get_tensor(index)
            for key, index in self._outputs.items()}


class OnnxRuntime(_NetworkRuntime):
  """A .onnx file of `serving.onnx`, run by ONNX Runtime on the CPU."""

  name = 'ONNX Runtime'

  def __init__(self, path: str):
    # Imported here: tf2onnx and ONNX Runtime load only when an .onnx file is run.
    import onnxruntime  # pylint: disable=g-import-not-at-top
    from cmt_deeplab_tf.serving import onnx as onnx_export  # pylint: disable=g-import-not-at-top
    self._session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    super().__init__(onnx_export.read_metadata(
        self._session.get_modelmeta().custom_metadata_map, path), path)
    self._outputs = {_logits_name(o.shape): o.name for o in self._session.get_outputs()}

  def network(self, image):
    values = self._session.run(list(self._outputs.values()),
                               {export_lib.NETWORK_INPUT: image})
    return dict(zip(self._outputs, values))


class CheckpointRuntime(_TensorFlowRuntime):
  """A training run's checkpoint, served by `export_lib.serving_function`."""

  name = 'TensorFlow (checkpoint)'

  def __init__(self, model_dir: str, checkpoint: Optional[str] = None):
    model, post_processor, info = export_lib.load_model_from_model_dir(
        model_dir, checkpoint)
    super().__init__(export_lib.serving_function(model, post_processor,
                                                 info.label_divisor), info)


def load_runtime(path: str) -> Runtime:
  """The runtime for a SavedModel folder, a .tflite or a .onnx file.

  Raises:
    ValueError: naming the path, if it is none of these.
  """
  if not tf.io.gfile.exists(path):
    raise ValueError(f'--model={path} does not exist.')
  if path.endswith('.tflite'):
    return TFLiteRuntime(path)
  if path.endswith('.onnx'):
    return OnnxRuntime(path)
  if tf.io.gfile.isdir(path):
    return SavedModelRuntime(path)
  raise ValueError(f'--model={path} is neither a SavedModel folder nor a .tflite or '
                   '.onnx file.')
