r"""Clustering-result and attention-map figures of CMT-DeepLab supplement §3.

  python -m cmt_deeplab_tf.visualize --model_dir=runs/cmt_s [--checkpoint=...] \
      [--max_model_dir=runs/max_s [--max_checkpoint=...]] \
      --image_dir=photos (or --images=a.jpg,b.png) --output_dir=figures \
      [--num_centers=4] [--tile_size=160] [--alpha=0.5]

For every image it writes to --output_dir:

  <name>_clustering.png  (supplement Figs. 2-5) one row per cluster center
                         matched to one of the top --num_centers predicted
                         segments (by class confidence): the segment, then the
                         center's clustering result at every CMT layer;
  <name>_attention.png   (supplement Figs. 6-8) the same rows: the segment, the
                         last layer's cross-attention of the CMT model and of
                         the --max_model_dir model (its center whose argmax
                         region has the best IoU with the segment). Without
                         --max_model_dir: the CMT model's own last-layer
                         clustering result next to its cross-attention (the
                         figure's title says so).

Maps follow the supplement's recipe (`analysis.attention_maps`): averaged over
heads, bilinearly upsampled to the image, min-max normalised to [0, 255], no
smoothing, jet colours over the image. Images are padded to 32k + 1 like the
serving signature (`export_lib.pad_images`). An image without any predicted
segment is skipped with a warning.
"""
import collections
import os
from typing import List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from cmt_deeplab_tf import cli
from cmt_deeplab_tf import common
from cmt_deeplab_tf import predict
from cmt_deeplab_tf.analysis import figures
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.serving import export_lib

# A restored training run: tf_keras model, its PostProcessor and DatasetInfo.
LoadedRun = collections.namedtuple('LoadedRun',
                                   ['model', 'post_processor', 'info'])
# The probe size of `load_run`: 32k + 1, the smallest every model runs on.
_PROBE_SIZE = 65
# One image through one model, batch dimension removed: the model's output
# dict (tensors) and its post-processed predictions (NumPy).
ModelResult = collections.namedtuple('ModelResult', ['outputs', 'predictions'])


def _define_flags():
  flags.DEFINE_string('model_dir', None, 'The CMT-DeepLab training run to show.')
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint prefix in --model_dir; default: the latest.')
  flags.DEFINE_string('max_model_dir', None,
                      'Optional MaX-DeepLab run to compare cross-attention with.')
  flags.DEFINE_string('max_checkpoint', None,
                      'Checkpoint prefix in --max_model_dir; default: the latest.')
  flags.DEFINE_string('image_dir', None, 'Folder of .jpg / .jpeg / .png images.')
  flags.DEFINE_list('images', None, 'Or: comma-separated image paths.')
  flags.DEFINE_string('output_dir', None, 'Where to write the PNG figures.')
  flags.DEFINE_integer('num_centers', 4, 'Rows: centers of the top segments.')
  flags.DEFINE_integer('tile_size', 160, 'Longer side of each tile, in pixels.')
  flags.DEFINE_float('alpha', 0.5, 'Weight of the heatmap over the image.')


def resolve_image_paths(image_dir: Optional[str],
                        images: Optional[Sequence[str]]) -> List[str]:
  """The images to show, from exactly one of --image_dir and --images.

  Raises:
    ValueError: naming the flag, if both or neither are given, or a path of
      --images is not a file, or --image_dir holds no image.
  """
  if bool(image_dir) == bool(images):
    raise ValueError('Pass exactly one of --image_dir and --images, got '
                     f'--image_dir={image_dir} --images={images}.')
  if image_dir:
    return predict.list_images(image_dir)
  missing = [path for path in images if not tf.io.gfile.exists(path)]
  if missing:
    raise ValueError(f'--images: no such file(s): {", ".join(missing)}.')
  return list(images)


def load_run(model_dir: str, checkpoint: Optional[str], flag: str,
             needs_clustering: bool) -> LoadedRun:
  """Restores a run and checks that its model returns the maps needed.

  Raises:
    ValueError: naming `flag`, if the model has no cross-attention maps, or no
      clustering maps while `needs_clustering` (e.g. a MaX-DeepLab run given as
      --model_dir).
  """
  run = LoadedRun(*export_lib.load_model_from_model_dir(model_dir, checkpoint))
  probe = tf.zeros([1, _PROBE_SIZE, _PROBE_SIZE, 3])
  outputs = run.model(probe, training=False, return_visualization=True)
  if not outputs[common.ATTENTION_MAPS]:
    raise ValueError(f'{flag}={model_dir}: its model ({run.model.name}) returns no '
                     'cross-attention maps.')
  if needs_clustering and not outputs[common.CLUSTERING_MAPS]:
    raise ValueError(f'{flag}={model_dir}: its model ({run.model.name}) has no CMT '
                     'layer, hence no clustering results (pass a MaX-DeepLab run '
                     'as --max_model_dir).')
  return run


def run_model(run: LoadedRun, padded: tf.Tensor,
              image_size: Tuple[int, int]) -> ModelResult:
  """The model with visualisation outputs and the post-processing on one image.

  Args:
    run: the restored run.
    padded: float32 [1, H', W', 3], the padded, normalised image.
    image_size: (H, W) of the image before padding.
  """
  outputs = run.model(padded, training=False, return_visualization=True)
  predictions = run.post_processor(outputs, image_size)
  return ModelResult(outputs, {key: value.numpy()[0]
                               for key, value in predictions.items()})


def _maps(outputs, key: str) -> List[np.ndarray]:
  """The per-layer maps of one image, float [h_l, w_l, N]; RFN: both networks'."""
  layers = list(outputs.get(common.FIRST_NETWORK_OUTPUTS, {}).get(key, []))
  return [maps.numpy()[0] for maps in layers + list(outputs[key])]


def _compare(compared_run: LoadedRun, padded: tf.Tensor, image_size: Tuple[int, int],
             segment_masks: np.ndarray) -> figures.ComparedModel:
  """The compared model's last-layer attention and its best-IoU center per segment."""
  outputs = compared_run.model(padded, training=False, return_visualization=True)
  mask_logits = post_processing.upsample_mask_logits(outputs[common.MASK_LOGITS],
                                                     image_size)
  cluster_map = tf.argmax(mask_logits, axis=-1).numpy()[0]
  clusters, ious = figures.match_clusters_by_iou(segment_masks, cluster_map,
                                                 mask_logits.shape[-1])
  return figures.ComparedModel(compared_run.model.name,
                               _maps(outputs, common.ATTENTION_MAPS)[-1],
                               clusters, ious)


def visualize_image(image: np.ndarray, run: LoadedRun,
                    compared_run: Optional[LoadedRun], num_centers: int,
                    tile_size: int, alpha: float
                    ) -> Optional[Tuple[Image.Image, Image.Image]]:
  """(clustering figure, attention figure) of one uint8 [H, W, 3] image.

  Returns None if the model predicts no segment in the image.
  """
  image_size = image.shape[:2]
  padded = export_lib.pad_images(tf.constant(image[np.newaxis]))
  padded_size = tuple(padded.shape[1:3])
  result = run_model(run, padded, image_size)
  panoptic = result.predictions[common.PANOPTIC_PRED]
  centers = figures.select_centers(
      result.predictions[common.SEGMENT_PANOPTIC_IDS],
      result.predictions[common.SEGMENT_SCORES], num_centers, run.info)
  if not centers:
    return None
  clustering_maps = _maps(result.outputs, common.CLUSTERING_MAPS)
  compared = None
  if compared_run is not None:
    segment_masks = np.stack([panoptic == c.segment_id for c in centers])
    compared = _compare(compared_run, padded, image_size, segment_masks)
  name = run.model.name
  clustering = figures.clustering_figure(
      image, panoptic, centers, clustering_maps, padded_size, run.info, name,
      tile_size, alpha)
  attention = figures.attention_figure(
      image, panoptic, centers, name, clustering_maps[-1],
      _maps(result.outputs, common.ATTENTION_MAPS)[-1], padded_size, run.info,
      compared, tile_size, alpha)
  return clustering, attention


def visualize(model_dir: str, image_paths: Sequence[str], output_dir: str,
              checkpoint: Optional[str] = None, max_model_dir: Optional[str] = None,
              max_checkpoint: Optional[str] = None, num_centers: int = 4,
              tile_size: int = 160, alpha: float = 0.5) -> List[str]:
  """Writes both figures of every image; returns the written paths.

  Raises:
    ValueError: naming the flag, on a bad run dir, a non-positive
      --num_centers / --tile_size or --alpha outside [0, 1].
  """
  if num_centers < 1 or tile_size < 1:
    raise ValueError('--num_centers and --tile_size must be positive, got '
                     f'{num_centers} and {tile_size}.')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'--alpha must be in [0, 1], got {alpha}.')
  # Each load replaces the process's gin config with that run's; each run's
  # model and post-processor are built right after its own config is parsed.
  run = load_run(model_dir, checkpoint, '--model_dir', needs_clustering=True)
  compared_run = None
  if max_model_dir:
    compared_run = load_run(max_model_dir, max_checkpoint, '--max_model_dir',
                            needs_clustering=False)
  tf.io.gfile.makedirs(output_dir)
  written = []
  for path in image_paths:
    pictures = visualize_image(predict.read_image(path), run, compared_run,
                               num_centers, tile_size, alpha)
    if pictures is None:
      logging.warning('%s: no predicted segment, no figure.', path)
      continue
    name = os.path.splitext(os.path.basename(path))[0]
    for suffix, picture in zip(('clustering', 'attention'), pictures):
      written.append(os.path.join(output_dir, f'{name}_{suffix}.png'))
      with tf.io.gfile.GFile(written[-1], 'wb') as f:
        picture.save(f, format='PNG', optimize=True)
    logging.info('%s -> %s/%s_{clustering,attention}.png', path, output_dir, name)
  return written


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  image_paths = resolve_image_paths(FLAGS.image_dir, FLAGS.images)
  visualize(FLAGS.model_dir, image_paths, FLAGS.output_dir, FLAGS.checkpoint,
            FLAGS.max_model_dir, FLAGS.max_checkpoint, FLAGS.num_centers,
            FLAGS.tile_size, FLAGS.alpha)


def run():
  _define_flags()
  flags.mark_flags_as_required(['model_dir', 'output_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
