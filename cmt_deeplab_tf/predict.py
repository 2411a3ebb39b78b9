r"""Runs an exported SavedModel or a training checkpoint over a folder of images.

  python -m cmt_deeplab_tf.predict --saved_model=exported/cmt_s \
      --image_dir=photos --output_dir=predictions
  python -m cmt_deeplab_tf.predict --model_dir=runs/cmt_s [--checkpoint=...] \
      --image_dir=photos --output_dir=predictions [--dataset=coco]
  python -m cmt_deeplab_tf.predict --saved_model=exported/cmt_s \
      --image_dir=coco/test2017 --output_dir=submission --format=coco

With --format=coco or cityscapes it writes a benchmark submission instead
(`evaluation.submission`): one PNG per image in `<output_dir>/<name>/` and
`<output_dir>/<name>.json` (name `panoptic_predictions` for COCO,
`cityscapes_panoptic_val` for Cityscapes), with the data set's own category ids.
Image ids are the file names without extension (COCO: digits, `%012d.jpg`;
Cityscapes: `<city>_<seq>_<frame>_leftImg8bit.png`).

With the default --format=visual, for every `<name>.jpg|.jpeg|.png` in
--image_dir (any size, greyscale and RGBA are converted to RGB) it writes to
--output_dir:

  <name>_panoptic.png      the panoptic map in colour: one hue per class, shades
                           per instance, void black (`ops.colors`);
  <name>_overlay.png       those colours blended 50/50 over the image;
  <name>_panoptic_ids.png  the raw panoptic ids, semantic * label_divisor +
                           instance (void = 255 * label_divisor), as a COCO-style
                           RGB PNG: id = R + 256 G + 256^2 B. Lossless for every
                           label divisor (a 16-bit PNG cannot hold Cityscapes'
                           void id 255000); decode with `panoptic_format.rgb_to_id`;
  <name>_segments.json     [{panoptic_id, class_id, class_name, is_thing, score,
                           area}] per segment of the map; a stuff segment merged
                           from several clusters has the highest of their scores.

The class table is the one recorded with the model (the SavedModel's class
table variables, or the run's class_table.json); --dataset (a built-in name or
a class_table.json) overrides its names and ids and must have as many classes.
"""
import io
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.serving import export_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
VISUAL = 'visual'
FORMATS = (VISUAL,) + submission.FORMATS

Predictor = Callable[..., Dict[str, tf.Tensor]]


def _define_flags():
  flags.DEFINE_string('saved_model', None, 'An exported SavedModel directory.')
  flags.DEFINE_string('model_dir', None, 'Or: the model dir of a training run.')
  flags.DEFINE_string('checkpoint', None,
                      'With --model_dir: checkpoint prefix; default: the latest.')
  flags.DEFINE_string('image_dir', None, 'Folder of .jpg / .jpeg / .png images.')
  flags.DEFINE_string('output_dir', None, 'Where to write the predictions.')
  flags.DEFINE_string('dataset', None,
                      'Class table (built-in name or class_table.json) for colours, names '
                      'and ids; default: the model\'s.')
  flags.DEFINE_enum('format', VISUAL, FORMATS,
                    'visual: coloured maps and per-image files; coco / cityscapes: a '
                    'benchmark submission.')


def load_predictor(saved_model: Optional[str] = None, model_dir: Optional[str] = None,
                   checkpoint: Optional[str] = None
                   ) -> Tuple[Predictor, dataset_info_lib.DatasetInfo]:
  """A function images=uint8 [1, H, W, 3] -> the serving outputs, and its class table.

  Exactly one of `saved_model` and `model_dir` must be given.

  Raises:
    ValueError: naming the flag, if both or neither are given, or the path holds
      no SavedModel / run.
  """
  if bool(saved_model) == bool(model_dir):
    raise ValueError('Pass exactly one of --saved_model and --model_dir, got '
                     f'--saved_model={saved_model} --model_dir={model_dir}.')
  if model_dir:
    model, post_processor, info = export_lib.load_model_from_model_dir(
        model_dir, checkpoint)
    serve = export_lib.serving_function(model, post_processor, info.label_divisor)
    return serve, info
  if not tf.saved_model.contains_saved_model(saved_model):
    raise ValueError(f'--saved_model={saved_model} holds no SavedModel.')
  loaded = tf.saved_model.load(saved_model)

  def predictor(images):  # Closes over `loaded`, which owns the variables.
    return loaded.signatures[export_lib.SIGNATURE_NAME](images=images)
  return predictor, export_lib.class_table_from_saved_model(loaded)


def list_images(image_dir: str) -> List[str]:
  """The sorted paths of the images in image_dir (not recursive)."""
  if not tf.io.gfile.isdir(image_dir):
    raise ValueError(f'--image_dir={image_dir} is not a directory.')
  names = sorted(n for n in tf.io.gfile.listdir(image_dir)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f'--image_dir={image_dir} holds no {"/".join(IMAGE_EXTENSIONS)} '
                     'images.')
  return [os.path.join(image_dir, n) for n in names]


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    with Image.open(io.BytesIO(f.read())) as image:
      return np.asarray(image.convert('RGB'))


def segments(panoptic: np.ndarray, segment_panoptic_ids: np.ndarray,
             segment_scores: np.ndarray,
             info: dataset_info_lib.DatasetInfo) -> List[Dict[str, object]]:
  """Describes each non-void segment of a panoptic map [H, W].

  Args:
    panoptic: int [H, W] panoptic ids.
    segment_panoptic_ids: int [N], per cluster its segment's id (-1 if none).
    segment_scores: float [N], per cluster its class confidence.
    info: the class table.
  """
  ids, areas = np.unique(panoptic, return_counts=True)
  void = info.ignore_label * info.label_divisor
  described = []
  for panoptic_id, area in zip(ids.tolist(), areas.tolist()):
    if panoptic_id == void:
      continue
    class_id = panoptic_id // info.label_divisor
    described.append({
        'panoptic_id': panoptic_id, 'class_id': class_id,
        'class_name': info.class_names[class_id],
        'is_thing': info.is_thing[class_id],
        'score': float(segment_scores[segment_panoptic_ids == panoptic_id].max()),
        'area': area})
  return described


def _write(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def write_prediction(image: np.ndarray, outputs: Dict[str, np.ndarray],
                     info: dataset_info_lib.DatasetInfo, output_dir: str,
                     name: str) -> List[str]:
  """Writes the four files of one image (see the module docstring); returns them.

  Args:
    image: uint8 [H, W, 3].
    outputs: the serving outputs of this image (batch dimension removed).
    info: the class table.
    output_dir: existing output folder.
    name: file name stem.
  """
  panoptic = outputs[export_lib.PANOPTIC]
  colored = colors.colorize_panoptic(panoptic, info)
  described = segments(panoptic, outputs[export_lib.SEGMENT_PANOPTIC_IDS],
                       outputs[export_lib.SEGMENT_SCORES], info)
  files = {
      f'{name}_panoptic.png': panoptic_format.encode_png(colored),
      f'{name}_overlay.png': panoptic_format.encode_png(colors.overlay(image, colored)),
      f'{name}_panoptic_ids.png': panoptic_format.encode_png(
          panoptic_format.id_to_rgb(panoptic)),
      f'{name}_segments.json': json.dumps(described, indent=1).encode(),
  }
  paths = []
  for file_name, data in files.items():
    paths.append(os.path.join(output_dir, file_name))
    _write(paths[-1], data)
  return paths


def override_dataset_info(model_info: dataset_info_lib.DatasetInfo,
                          dataset: Optional[str]) -> dataset_info_lib.DatasetInfo:
  """The model's class table, or the --dataset override if it fits the model."""
  if not dataset:
    return model_info
  override = (dataset_info_lib.get_dataset_info(dataset)
              if dataset in dataset_info_lib.BUILT_IN
              else class_table.read_class_table(dataset))
  if (override.num_classes, override.label_divisor) != (model_info.num_classes,
                                                        model_info.label_divisor):
    raise ValueError(f'--dataset={dataset} has {override.num_classes} classes (label '
                     f'divisor {override.label_divisor}) but the model was trained on '
                     f'{model_info.name} with {model_info.num_classes} (label divisor '
                     f'{model_info.label_divisor}).')
  return override


def predict_images(image_dir: str, output_dir: str, saved_model: Optional[str] = None,
                   model_dir: Optional[str] = None, checkpoint: Optional[str] = None,
                   dataset: Optional[str] = None, output_format: str = VISUAL
                   ) -> List[str]:
  """Predicts every image of image_dir into output_dir; returns the written paths.

  With output_format 'coco' or 'cityscapes' the only path returned is the
  submission's JSON file (its PNG folder sits beside it).
  """
  if output_format not in FORMATS:
    raise ValueError(f'--format={output_format!r} is not one of {FORMATS}.')
  image_paths = list_images(image_dir)
  predictor, model_info = load_predictor(saved_model, model_dir, checkpoint)
  info = override_dataset_info(model_info, dataset)
  tf.io.gfile.makedirs(output_dir)
  writer = (None if output_format == VISUAL
            else submission.make_writer(output_format, output_dir, info))
  written = []
  for path in image_paths:
    image = read_image(path)
    outputs = predictor(images=tf.constant(image[np.newaxis]))
    outputs = {key: value.numpy()[0] for key, value in outputs.items()}
    name = os.path.splitext(os.path.basename(path))[0]
    if writer is None:
      written += write_prediction(image, outputs, info, output_dir, name)
      logging.info('%s -> %s/%s_*', path, output_dir, name)
      continue
    try:
      writer.add(name, outputs[export_lib.PANOPTIC])
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from e
  return written if writer is None else [writer.finalize()]


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  written = predict_images(FLAGS.image_dir, FLAGS.output_dir, FLAGS.saved_model,
                           FLAGS.model_dir, FLAGS.checkpoint, FLAGS.dataset,
                           FLAGS.format)
  logging.info('Wrote %d files to %s.', len(written), FLAGS.output_dir)


def run():
  _define_flags()
  flags.mark_flags_as_required(['image_dir', 'output_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
