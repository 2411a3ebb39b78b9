r"""Runs an exported model or a training checkpoint over a folder of images.

  python -m cmt_deeplab_tf.predict --model=exported/cmt_s \
      --image_dir=photos --output_dir=predictions [--batch_size=8] [--resume]
  python -m cmt_deeplab_tf.predict --model=exported/cmt_s/model.tflite ...
  python -m cmt_deeplab_tf.predict --model=exported/cmt_s/model.onnx ...
  python -m cmt_deeplab_tf.predict --model_dir=runs/cmt_s [--checkpoint=...] \
      --image_dir=photos --output_dir=predictions [--dataset=coco]
  python -m cmt_deeplab_tf.predict --model=exported/cmt_s \
      --image_dir=coco/test2017 --output_dir=submission --format=coco

--model takes a SavedModel folder (run by TensorFlow), a .tflite file (the
TFLite interpreter) or a .onnx file (ONNX Runtime); see `serving.runtimes`.
--saved_model is the same flag under its old name.

With --format=coco or cityscapes it writes a benchmark submission instead
(`evaluation.submission`): one PNG per image in `<output_dir>/<name>/` and
`<output_dir>/<name>.json` (name `panoptic_predictions` for COCO,
`cityscapes_panoptic_val` for Cityscapes), with the data set's own category ids.
Image ids are the file names without extension (COCO: digits, `%012d.jpg`;
Cityscapes: `<city>_<seq>_<frame>_leftImg8bit.png`).

Every file of --image_dir with an image extension PIL knows (JPEG, PNG, GIF,
BMP, WebP, TIFF, ...) is read: JPEG, PNG, GIF and BMP with the decoder training
uses (`tfrecord_format.decode_image`), the others with PIL; palette, greyscale,
RGBA and 16-bit images become 8-bit RGB. A file that cannot be read (empty,
truncated, not an image) is named in a warning and skipped, and the run ends
with a summary and exit status 1 (--skip_bad_images=False stops at the first).
Images of equal size are batched (--batch_size); --resume skips images whose
outputs exist.

With the default --format=visual, for every image it writes to --output_dir:

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
import collections
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.serving import runtimes

VISUAL = 'visual'
FORMATS = (VISUAL,) + submission.FORMATS
VISUAL_SUFFIXES = ('_panoptic.png', '_overlay.png', '_panoptic_ids.png', '_segments.json')
# Formats TF's decoder reads (the rest go to PIL); `Image.format` names.
_TF_DECODED = ('JPEG', 'PNG', 'GIF', 'BMP')
_PROGRESS_SECONDS = 10.0


class BadImageError(ValueError):
  """A file that cannot be read as an image; the message names the file."""


def _define_flags():
  flags.DEFINE_string('model', None,
                      'An exported model: a SavedModel folder, a .tflite or a .onnx file.')
  flags.DEFINE_string('saved_model', None, 'Alias of --model.')
  flags.DEFINE_string('model_dir', None, 'Or: the model dir of a training run.')
  flags.DEFINE_string('checkpoint', None,
                      'With --model_dir: checkpoint prefix; default: the latest.')
  flags.DEFINE_string('image_dir', None, 'Folder of images (any format PIL reads).')
  flags.DEFINE_string('output_dir', None, 'Where to write the predictions.')
  flags.DEFINE_string('dataset', None,
                      'Class table (built-in name or class_table.json) for colours, names '
                      'and ids; default: the model\'s.')
  flags.DEFINE_enum('format', VISUAL, FORMATS,
                    'visual: coloured maps and per-image files; coco / cityscapes: a '
                    'benchmark submission.')
  flags.DEFINE_integer('batch_size', 1, 'Images of equal size per model call.')
  flags.DEFINE_bool('skip_bad_images', True,
                    'Skip unreadable images (named in a warning; exit status 1 at the '
                    'end); if False, stop at the first.')
  flags.DEFINE_bool('resume', False,
                    'Skip images whose outputs exist (--format=visual).')


def load_runtime(model: Optional[str] = None, model_dir: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> runtimes.Runtime:
  """The runtime of an exported model or of a training run.

  Exactly one of `model` and `model_dir` must be given.

  Raises:
    ValueError: naming the flag, if both or neither are given, or the path holds
      no model / run.
  """
  if bool(model) == bool(model_dir):
    raise ValueError('Pass exactly one of --model (or --saved_model) and --model_dir, '
                     f'got --model={model} --model_dir={model_dir}.')
  if model_dir:
    return runtimes.CheckpointRuntime(model_dir, checkpoint)
  return runtimes.load_runtime(model)


def image_extensions() -> Tuple[str, ...]:
  """The file extensions PIL registers a reader for (lower case, with dot)."""
  Image.init()
  return tuple(sorted(ext for ext, name in Image.registered_extensions().items()
                      if name in Image.OPEN))


def list_images(image_dir: str) -> List[str]:
  """The sorted paths of the image files in image_dir (not recursive)."""
  if not tf.io.gfile.isdir(image_dir):
    raise ValueError(f'--image_dir={image_dir} is not a directory.')
  extensions = image_extensions()
  names = sorted(n for n in tf.io.gfile.listdir(image_dir)
                 if n.lower().endswith(extensions))
  if not names:
    raise ValueError(f'--image_dir={image_dir} holds no image files (extensions PIL '
                     'reads, e.g. .jpg, .png, .gif, .bmp, .webp, .tif).')
  return [os.path.join(image_dir, n) for n in names]


def _to_rgb8(image: Image.Image) -> np.ndarray:
  """A PIL image of any mode -> uint8 [H, W, 3]; 16-bit and 32-bit greys scaled."""
  if image.mode.startswith('I;16') or image.mode == 'I':
    values = np.asarray(image, np.int64)
    shift = 8 if image.mode.startswith('I;16') or values.max() < 65536 else 24
    grey = np.clip(values >> shift, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)
  if image.mode == 'F':
    grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., np.newaxis], 3, axis=-1)
  return np.asarray(image.convert('RGB'))


def read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3] RGB.

  JPEG, PNG, GIF (first frame) and BMP are decoded by `tfrecord_format.decode_image`
  (the pixels training saw for the same file); other formats by PIL.

  Raises:
    BadImageError: naming the file, if it is empty, truncated or not an image.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if not data:
    raise BadImageError(f'{path}: empty file')
  try:
    with Image.open(io.BytesIO(data)) as image:
      image_format = image.format
      if image_format not in _TF_DECODED:
        image.load()
        return _to_rgb8(image)
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad files.
    raise BadImageError(f'{path}: not a readable image ({e})') from e
  try:
    return tfrecord_format.decode_image(tf.constant(data)).numpy()
  except tf.errors.OpError as e:
    raise BadImageError(f'{path}: truncated or corrupt {image_format} '
                        f'({e.message.splitlines()[0]})') from e


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


class Summary:
  """What a prediction run did: files written, images skipped (and why), resumed."""

  def __init__(self):
    self.written: List[str] = []
    self.num_images = 0
    self.skipped: List[Tuple[str, str]] = []  # (path, reason)
    self.resumed = 0

  def skip(self, path: str, reason: str, skip_bad_images: bool) -> None:
    """Records a skipped image, or raises if skipping is off."""
    if not skip_bad_images:
      raise BadImageError(f'{reason} (pass --skip_bad_images to skip such files)')
    logging.warning('Skipping %s', reason)
    self.skipped.append((path, reason))

  def report(self, output_dir: str) -> str:
    lines = [f'Predicted {self.num_images} images into {output_dir} '
             f'({len(self.written)} files written); {self.resumed} already done '
             f'(--resume); {len(self.skipped)} skipped.']
    lines += [f'  skipped {reason}' for _, reason in self.skipped]
    return '\n'.join(lines)


def _batches(paths: Sequence[str], batch_size: int, summary: Summary,
             skip_bad_images: bool) -> List[List[str]]:
  """Paths grouped by image size (from the file headers), in batches of batch_size.

  Groups keep the order of their first image; files whose header PIL cannot read
  are skipped here.
  """
  groups: Dict[Tuple[int, int], List[str]] = collections.OrderedDict()
  for path in paths:
    try:
      with tf.io.gfile.GFile(path, 'rb') as f, Image.open(f) as image:
        size = image.size
    except (OSError, ValueError, SyntaxError, tf.errors.OpError) as e:
      reason = f'{path}: empty file' if not tf.io.gfile.stat(path).length else (
          f'{path}: not a readable image ({e})')
      summary.skip(path, reason, skip_bad_images)
      continue
    groups.setdefault(size, []).append(path)
  return [group[i:i + batch_size] for group in groups.values()
          for i in range(0, len(group), batch_size)]


class _Progress:
  """Logs count, rate and ETA at most every _PROGRESS_SECONDS."""

  def __init__(self, total: int):
    self._total, self._done = total, 0
    self._start = self._last = time.time()

  def update(self, count: int) -> None:
    self._done += count
    now = time.time()
    if now - self._last < _PROGRESS_SECONDS and self._done < self._total:
      return
    self._last = now
    per_image = (now - self._start) / max(self._done, 1)
    eta = per_image * (self._total - self._done)
    logging.info('%d/%d images, %.2f s/image, ETA %s', self._done, self._total,
                 per_image, time.strftime('%H:%M:%S', time.gmtime(eta)))


def _outputs_exist(output_dir: str, path: str) -> bool:
  stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
  return all(tf.io.gfile.exists(stem + suffix) for suffix in VISUAL_SUFFIXES)


def predict_images(image_dir: str, output_dir: str, model: Optional[str] = None,
                   model_dir: Optional[str] = None, checkpoint: Optional[str] = None,
                   dataset: Optional[str] = None, output_format: str = VISUAL,
                   batch_size: int = 1, skip_bad_images: bool = True,
                   resume: bool = False, saved_model: Optional[str] = None) -> Summary:
  """Predicts every image of image_dir into output_dir (see the module docstring).

  `saved_model` is an alias of `model`. With output_format 'coco' or
  'cityscapes' the only path written is the submission's JSON file (its PNG
  folder sits beside it).

  Raises:
    ValueError: for bad flags; BadImageError for an unreadable image if
      skip_bad_images is False.
  """
  if output_format not in FORMATS:
    raise ValueError(f'--format={output_format!r} is not one of {FORMATS}.')
  if batch_size < 1:
    raise ValueError(f'--batch_size={batch_size} must be at least 1.')
  if resume and output_format != VISUAL:
    raise ValueError(f'--resume works with --format={VISUAL} only (a submission is '
                     'one file written at the end).')
  if model and saved_model:
    raise ValueError('Pass --model or its alias --saved_model, not both.')
  image_paths = list_images(image_dir)
  runtime = load_runtime(model or saved_model, model_dir, checkpoint)
  info = override_dataset_info(runtime.info, dataset)
  tf.io.gfile.makedirs(output_dir)
  writer = (None if output_format == VISUAL
            else submission.make_writer(output_format, output_dir, info))
  summary = Summary()
  if resume:
    todo = [p for p in image_paths if not _outputs_exist(output_dir, p)]
    summary.resumed = len(image_paths) - len(todo)
    image_paths = todo
  progress = _Progress(len(image_paths))
  for batch_paths in _batches(image_paths, batch_size, summary, skip_bad_images):
    images = {}
    for path in batch_paths:
      try:
        images[path] = read_image(path)
      except BadImageError as e:
        summary.skip(path, str(e), skip_bad_images)
    if images:
      _predict_batch(runtime, images, info, output_dir, writer, summary, skip_bad_images)
    progress.update(len(batch_paths))
  if writer is not None:
    summary.written.append(writer.finalize())
  return summary


def _predict_batch(runtime, images: Dict[str, np.ndarray], info, output_dir, writer,
                   summary: Summary, skip_bad_images: bool) -> None:
  """Runs one batch of equal-size images and writes their outputs."""
  try:
    outputs = runtime(np.stack(list(images.values())))
  except ValueError as e:  # E.g. larger than a TFLite / ONNX model's input size.
    for path in images:
      summary.skip(path, f'{path}: {e}', skip_bad_images)
    return
  for i, (path, image) in enumerate(images.items()):
    name = os.path.splitext(os.path.basename(path))[0]
    image_outputs = {key: value[i] for key, value in outputs.items()}
    if writer is None:
      summary.written += write_prediction(image, image_outputs, info, output_dir, name)
    else:
      try:
        writer.add(name, image_outputs[export_lib.PANOPTIC])
      except ValueError as e:
        raise ValueError(f'{path}: {e}') from e
    summary.num_images += 1


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  summary = predict_images(FLAGS.image_dir, FLAGS.output_dir, FLAGS.model,
                           FLAGS.model_dir, FLAGS.checkpoint, FLAGS.dataset,
                           FLAGS.format, FLAGS.batch_size, FLAGS.skip_bad_images,
                           FLAGS.resume, FLAGS.saved_model)
  print(summary.report(FLAGS.output_dir))
  if summary.skipped:
    sys.exit(1)


def run():
  _define_flags()
  flags.mark_flags_as_required(['image_dir', 'output_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
