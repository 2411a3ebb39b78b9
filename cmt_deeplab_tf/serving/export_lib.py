"""SavedModel export: a trained model plus post-processing behind one signature.

The exported signature `serving_default` takes

  images: uint8 [B, H, W, 3], any H x W (all images of one call share it),

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

The SavedModel also carries the class table as variables, for serving systems
that do not have this package: `dataset_name`, `class_names`, `is_thing`,
`category_ids` (the data set's own id of each train id), `label_divisor` and
`ignore_label`; `class_table_from_saved_model` reads them back.
"""
from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.ops import post_processing

SIGNATURE_NAME = 'serving_default'
INPUT_IMAGES = 'images'
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


def pad_images(images: tf.Tensor) -> tf.Tensor:
  """uint8 [B, H, W, 3] -> float32 [B, H', W', 3] in [-1, 1], H', W' = padded_size.

  The padding (bottom and right) is the mean pixel, 0 after normalisation, as in
  the training and evaluation crops.
  """
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  paddings = [[0, 0], [0, padded_size(height) - height],
              [0, padded_size(width) - width], [0, 0]]
  return tf.pad(augment.normalize_image(images), paddings)


def serving_function(model: tf_keras.Model,
                     post_processor: post_processing.PostProcessor,
                     label_divisor: int) -> tf.types.experimental.GenericFunction:
  """The serving `tf.function`: uint8 [B, H, W, 3] -> the `OUTPUT_NAMES` dict.

  Args:
    model: a built model of `builder.build_model`.
    post_processor: turns its outputs into panoptic predictions.
    label_divisor: that of the post-processor (to split segment ids).

  Returns:
    A `tf.function` with a fixed input signature (see the module docstring).
  """
  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_IMAGES)])
  def serve(images):
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
  return serve


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


def export(model_dir: str, export_dir: str, checkpoint: Optional[str] = None) -> None:
  """Exports a training run as a SavedModel with the `serving_default` signature.

  Args:
    model_dir: the `--model_dir` of a training run.
    export_dir: where to write the SavedModel (created or overwritten).
    checkpoint: a checkpoint prefix; default: the latest one in model_dir.
  """
  model, post_processor, info = load_model_from_model_dir(model_dir, checkpoint)
  serve = serving_function(model, post_processor, info.label_divisor)
  tf.saved_model.save(ExportedState(model, info), export_dir,
                      signatures={SIGNATURE_NAME: serve.get_concrete_function()})
