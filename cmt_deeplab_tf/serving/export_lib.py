"""SavedModel export: a trained model plus post-processing behind one signature.

The signature takes one of three inputs (`INPUT_TYPES`, Model Garden's names):

  image_tensor: `images`, uint8 [B, H, W, 3], any H x W (all images of one call
                share it);
  image_bytes:  `image_bytes`, string [B], encoded JPEG / PNG (/ GIF / BMP) files
                of one size, decoded in the graph as training decodes them
                (`tfrecord_format.decode_image`);
  tf_example:   `tf_example`, string [B], serialized `tf.train.Example`s of the
                project's record format (`image/encoded` is read, nothing else),

decodes them to uint8 [B, H, W, 3],
pads them at the bottom/right with the mean pixel to the next size of the form
32k + 1 (the crop sizes the models are trained on, e.g. 129, 641, 1025), runs the
model and the post-processing, and returns maps at the input size:

  panoptic:             int32 [B, H, W], semantic * label_divisor + instance;
                        void = 255 * label_divisor.
  semantic:             int32 [B, H, W], train ids (see PostProcessor for void).
  instance:             int32 [B, H, W], 1, 2, ... per thing segment, 0 otherwise.
  segment_panoptic_ids: int32 [B, N], per cluster the panoptic id of its segment,
                        -1 if none of its pixels survives.
  segment_classes:      int32 [B, N], the segment's train id, -1 if none.
  segment_scores:       float32 [B, N], its class confidence, 0 if none.

The mask logits are upsampled straight to the input size (logit (i, j) sits on
pixel (4i, 4j), so this equals upsampling to the padded size and cropping), hence
padding pixels never count towards area limits or the segment lists.

The first input type given to `export` is `serving_default`; every type given is
also a signature of its own name. For TFLite and ONNX (`serving.tflite`,
`serving.onnx`) the network alone is converted (`network_function`); padding and
post-processing then run in NumPy (`serving.runtimes`), configured by the
`deployment_metadata` stored in the file.

The SavedModel also carries the class table as variables, for serving systems
that do not have this package: `dataset_name`, `class_names`, `is_thing`,
`category_ids` (the data set's own id of each train id), `label_divisor` and
`ignore_label`; `class_table_from_saved_model` reads them back.
"""
import inspect
from typing import Dict, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.training import experiment

SIGNATURE_NAME = 'serving_default'
IMAGE_TENSOR = 'image_tensor'
IMAGE_BYTES = 'image_bytes'
TF_EXAMPLE = 'tf_example'
INPUT_TYPES = (IMAGE_TENSOR, IMAGE_BYTES, TF_EXAMPLE)
INPUT_IMAGES = 'images'
# The signature's input name per input type.
INPUT_NAMES = {IMAGE_TENSOR: INPUT_IMAGES, IMAGE_BYTES: IMAGE_BYTES,
               TF_EXAMPLE: TF_EXAMPLE}
# The network's input for TFLite / ONNX: float32 [B, H', W', 3], padded.
NETWORK_INPUT = 'image'
NETWORK_OUTPUTS = (common.CLASS_LOGITS, common.MASK_LOGITS)
PANOPTIC = 'panoptic'
SEMANTIC = 'semantic'
INSTANCE = 'instance'
SEGMENT_PANOPTIC_IDS = common.SEGMENT_PANOPTIC_IDS
SEGMENT_CLASSES = 'segment_classes'
SEGMENT_SCORES = common.SEGMENT_SCORES
OUTPUT_NAMES = (PANOPTIC, SEMANTIC, INSTANCE, SEGMENT_PANOPTIC_IDS,
                SEGMENT_CLASSES, SEGMENT_SCORES)

SIZE_MULTIPLE = 32
_BUILD_SIZE = 65


def padded_size(size):
  """The smallest 32k + 1 >= size (int or int32 tensor); e.g. 97 -> 97, 130 -> 161."""
  return (size - 1 + SIZE_MULTIPLE - 1) // SIZE_MULTIPLE * SIZE_MULTIPLE + 1


def pad_images(images: tf.Tensor, size: Optional[Tuple[int, int]] = None) -> tf.Tensor:
  """uint8 [B, H, W, 3] -> float32 [B, H', W', 3] in [-1, 1].

  (H', W') is `size`, default (padded_size(H), padded_size(W)). The padding
  (bottom and right) is the mean pixel, 0 after normalisation, as in the
  training and evaluation crops.
  """
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  target = size or (padded_size(height), padded_size(width))
  paddings = [[0, 0], [0, target[0] - height], [0, target[1] - width], [0, 0]]
  return tf.pad(augment.normalize_image(images), paddings)


def serving_function(model: tf_keras.Model,
                     post_processor: post_processing.PostProcessor,
                     label_divisor: int, input_type: str = IMAGE_TENSOR
                     ) -> tf.types.experimental.GenericFunction:
  """The serving `tf.function`: `input_type`'s input -> the `OUTPUT_NAMES` dict.

  Args:
    model: a built model of `builder.build_model`.
    post_processor: turns its outputs into panoptic predictions.
    label_divisor: that of the post-processor (to split segment ids).
    input_type: one of `INPUT_TYPES`.

  Returns:
    A `tf.function` with a fixed input signature (see the module docstring).
  """
  if input_type not in INPUT_TYPES:
    raise ValueError(f'--input_type={input_type} is not one of {INPUT_TYPES}.')

  def predict_maps(images):
    outputs = model(pad_images(images), training=False)
    predictions = post_processor(outputs, tf.shape(images)[1:3])
    segment_ids = predictions[common.SEGMENT_PANOPTIC_IDS]
    return {
        PANOPTIC: predictions[common.PANOPTIC_PRED],
        SEMANTIC: predictions[common.SEMANTIC_PRED],
        INSTANCE: predictions[common.INSTANCE_PRED],
        SEGMENT_PANOPTIC_IDS: segment_ids,
        SEGMENT_CLASSES: tf.where(segment_ids >= 0, segment_ids // label_divisor, -1),
        SEGMENT_SCORES: predictions[common.SEGMENT_SCORES],
    }

  name = INPUT_NAMES[input_type]
  if input_type == IMAGE_TENSOR:
    return tf.function(predict_maps, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name=name)])

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=name)])
  def serve_encoded(encoded):
    if input_type == TF_EXAMPLE:
      encoded = tf.io.parse_example(encoded, {
          tfrecord_format.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)
      })[tfrecord_format.IMAGE_ENCODED]
    images = tf.map_fn(tfrecord_format.decode_image, encoded,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return predict_maps(images)
  return serve_encoded


def network_function(model: tf_keras.Model, input_size: Tuple[int, int]
                     ) -> tf.types.experimental.GenericFunction:
  """The network alone, for converters: float32 [1, H', W', 3] -> logits.

  Args:
    model: a built model.
    input_size: (H', W'), each of the form 32k + 1.

  Returns:
    A `tf.function` image -> {CLASS_LOGITS [1, N, C + 1], MASK_LOGITS
    [1, (H' - 1) / 4 + 1, (W' - 1) / 4 + 1, N]}; the image is `pad_images`'
    output (normalised to [-1, 1], padding 0).
  """
  check_input_size(input_size)

  @tf.function(input_signature=[
      tf.TensorSpec([1, *input_size, 3], tf.float32, name=NETWORK_INPUT)])
  def network(image):
    outputs = model(image, training=False)
    return {key: outputs[key] for key in NETWORK_OUTPUTS}
  return network


def check_input_size(input_size: Sequence[int]) -> None:
  """Raises ValueError unless input_size is (H, W) with both of the form 32k + 1."""
  if len(input_size) != 2 or any(padded_size(s) != s or s < 33 for s in input_size):
    raise ValueError(f'--input_size={input_size} must be HEIGHTxWIDTH, each of the '
                     'form 32k + 1 >= 33 (e.g. 129x129, 641x641).')


def post_processing_settings() -> Dict[str, object]:
  """The `PostProcessor` settings under the current gin config (defaults + bindings)."""
  parameters = inspect.signature(post_processing.PostProcessor.__init__).parameters
  settings = {name: parameter.default for name, parameter in parameters.items()
              if parameter.default is not inspect.Parameter.empty}
  settings.update(gin.get_bindings(post_processing.PostProcessor))
  return settings


def deployment_metadata(info: dataset_info_lib.DatasetInfo,
                        input_size: Tuple[int, int]) -> Dict[str, object]:
  """What a TFLite / ONNX file needs beside its network, as JSON-able data.

  Keys: `class_table` (`DatasetInfo.to_json`), `post_processing` (the
  `PostProcessor` settings of the current gin config) and `input_size` (H', W').
  """
  return {'class_table': info.to_json(), 'post_processing': post_processing_settings(),
          'input_size': list(input_size)}


def default_input_size() -> Tuple[int, int]:
  """The run's evaluation crop size (parse its operative config first)."""
  return tuple(experiment.ExperimentConfig().eval_crop_size)


class ExportedState(tf.Module):
  """What the SavedModel holds besides its signature: weights and class table.

  The Keras model itself is not tracked, only its variables: Keras' SavedModel
  serialisation re-traces every layer on its own, which is slow and fails for
  layers that hand state to one another. Nor is the serving function an
  attribute: `tf.saved_model.save` would trace it a second time.
  """

  def __init__(self, model: tf_keras.Model, info: dataset_info_lib.DatasetInfo):
    super().__init__(name='panoptic_serving')
    self.model_variables = list(model.variables)
    self.dataset_name = tf.Variable(info.name, trainable=False, name='dataset_name')
    self.class_names = tf.Variable(list(info.class_names), trainable=False,
                                   name='class_names')
    self.is_thing = tf.Variable(list(info.is_thing), trainable=False, name='is_thing')
    self.category_ids = tf.Variable(list(info.source_ids), trainable=False,
                                    name='category_ids')
    self.label_divisor = tf.Variable(info.label_divisor, trainable=False,
                                     name='label_divisor')
    self.ignore_label = tf.Variable(info.ignore_label, trainable=False,
                                    name='ignore_label')


def class_table_from_saved_model(loaded) -> dataset_info_lib.DatasetInfo:
  """The class table an exported model carries (see `ExportedState`)."""
  return dataset_info_lib.DatasetInfo(
      name=loaded.dataset_name.numpy().decode(),
      class_names=tuple(n.decode() for n in loaded.class_names.numpy()),
      is_thing=tuple(bool(t) for t in loaded.is_thing.numpy()),
      label_divisor=int(loaded.label_divisor.numpy()),
      source_ids=tuple(int(i) for i in loaded.category_ids.numpy()),
      ignore_label=int(loaded.ignore_label.numpy()))


def _checkpoint_path(model_dir: str, checkpoint: Optional[str]) -> str:
  """The checkpoint to restore: `checkpoint` if given, else the latest in model_dir."""
  if checkpoint:
    if not tf.io.gfile.exists(checkpoint + '.index'):
      raise ValueError(f'--checkpoint={checkpoint} is not a checkpoint '
                       f'({checkpoint}.index does not exist).')
    return checkpoint
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is None:
    raise ValueError(f'--model_dir={model_dir} holds no checkpoint; train first or '
                     'pass --checkpoint.')
  return latest


def _restore(model: tf_keras.Model, path: str) -> None:
  """Restores the model's weights (and nothing else) from a training checkpoint."""
  try:
    status = tf.train.Checkpoint(model=model).restore(path)
    status.expect_partial()  # The optimizers' slots are not needed.
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise ValueError(f'Checkpoint {path} does not match the model of its '
                     f'{run_dir.CONFIG_FILE} and class table: {str(e)[:500]}') from e


def load_model_from_model_dir(
    model_dir: str, checkpoint: Optional[str] = None
) -> Tuple[tf_keras.Model, post_processing.PostProcessor,
           dataset_info_lib.DatasetInfo]:
  """Rebuilds a training run's model from its model dir and restores its weights.

  Parses `<model_dir>/operative_config.gin` (this replaces the process's global
  gin config), builds the model for the classes of `<model_dir>/class_table.json`
  in float32 (whatever the run's mixed-precision policy) and restores the model
  part of the checkpoint.

  Args:
    model_dir: the `--model_dir` of a training run.
    checkpoint: a checkpoint prefix (e.g. `<model_dir>/ckpt-1000`); default: the
      latest one in model_dir.

  Returns:
    (model, post_processor, dataset_info); the post-processor has the run's gin
    settings.

  Raises:
    ValueError: naming the path, if model_dir, its config or a checkpoint is
      missing, or the checkpoint does not fit the configured model.
  """
  if not tf.io.gfile.isdir(model_dir):
    raise ValueError(f'--model_dir={model_dir} does not exist.')
  path = _checkpoint_path(model_dir, checkpoint)
  run_dir.parse_operative_config(model_dir)
  info = run_dir.read_class_table(model_dir)
  model = builder.build_model(num_classes=builder.num_classes_for(info.num_classes))
  model(tf.zeros([1, _BUILD_SIZE, _BUILD_SIZE, 3]), training=False)
  _restore(model, path)
  post_processor = post_processing.PostProcessor(info.is_thing, info.label_divisor)
  return model, post_processor, info


def load_network(model_dir: str, checkpoint: Optional[str] = None,
                 input_size: Optional[Tuple[int, int]] = None
                 ) -> Tuple[tf.types.experimental.GenericFunction, Dict[str, object]]:
  """A training run's `network_function` and its `deployment_metadata`.

  Args:
    model_dir: the `--model_dir` of a training run.
    checkpoint: a checkpoint prefix; default: the latest one in model_dir.
    input_size: the fixed (H', W'); default: the run's evaluation crop size.
  """
  model, _, info = load_model_from_model_dir(model_dir, checkpoint)
  input_size = tuple(input_size or default_input_size())
  return network_function(model, input_size), deployment_metadata(info, input_size)


def export(model_dir: str, export_dir: str, checkpoint: Optional[str] = None,
           input_types: Sequence[str] = (IMAGE_TENSOR,)) -> None:
  """Exports a training run as a SavedModel.

  Args:
    model_dir: the `--model_dir` of a training run.
    export_dir: where to write the SavedModel (created or overwritten).
    checkpoint: a checkpoint prefix; default: the latest one in model_dir.
    input_types: `INPUT_TYPES`; the first is `serving_default`, each is also a
      signature of its own name.
  """
  if not input_types or len(set(input_types)) != len(input_types):
    raise ValueError(f'--input_type must name each input type once, got {input_types}.')
  for input_type in input_types:
    if input_type not in INPUT_TYPES:
      raise ValueError(f'--input_type={input_type} is not one of {INPUT_TYPES}.')
  model, post_processor, info = load_model_from_model_dir(model_dir, checkpoint)
  signatures = {
      input_type: serving_function(model, post_processor, info.label_divisor,
                                   input_type).get_concrete_function()
      for input_type in input_types}
  signatures[SIGNATURE_NAME] = signatures[input_types[0]]
  tf.saved_model.save(ExportedState(model, info), export_dir, signatures=signatures)
