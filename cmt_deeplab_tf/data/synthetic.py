r"""The built-in synthetic panoptic data set, written in the COCO panoptic format.

Each image has textured stuff regions (sky, grass, water, sand) and several thing
instances (disc, square, triangle, ring) that overlap; some images carry a crowd
region (a cluster of small shapes labelled as one `iscrowd` segment) and some void
pixels (thin unlabeled outlines and patches, as COCO has). The set is a pure
function of its flags: the same seed gives the same bytes.

Layout written under `--output_dir`:
  {split}/{image_id:012d}.jpg                      images
  annotations/panoptic_{split}/{image_id:012d}.png  RGB-encoded segment ids
  annotations/panoptic_{split}.json                 images, annotations, categories

Usage:
  python -m cmt_deeplab_tf.data.synthetic --output_dir /tmp/synthetic \
      --num_train 96 --num_val 24 --height 128 --width 128 --seed 0
"""
import colorsys
import dataclasses
import json
import os
from typing import Dict, List, Tuple

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_format

_THING_HUES = {'disc': 0.0, 'square': 0.1, 'triangle': 0.8, 'ring': 0.33}
_MIN_VISIBLE_AREA = 4


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What the generator draws."""
  height: int = 128
  width: int = 128
  max_instances: int = 5
  crowd_probability: float = 0.15
  void_probability: float = 0.3


@dataclasses.dataclass
class _Canvas:
  """An image under construction with its segment-id map and segment metadata."""
  image: np.ndarray            # float32 [H, W, 3] in [0, 1].
  segments: np.ndarray         # int64 [H, W], 0 = void.
  infos: Dict[int, Dict]       # segment id -> {category_id, iscrowd}.


def _categories() -> List[Dict]:
  return [{'id': cid, 'name': name, 'isthing': int(isthing),
           'supercategory': 'thing' if isthing else 'stuff'}
          for cid, name, isthing in dataset_info.SYNTHETIC_CATEGORIES]


def _category_id(name: str) -> int:
  for cid, category_name, _ in dataset_info.SYNTHETIC_CATEGORIES:
    if category_name == name:
      return cid
  raise KeyError(name)


def _stuff_texture(name: str, yy: np.ndarray, xx: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
  """A [H, W, 3] texture in [0, 1] that identifies a stuff class."""
  noise = rng.normal(0.0, 1.0, yy.shape)
  if name == 'sky':
    base = np.stack([0.45 + 0.1 * yy, 0.65 + 0.1 * yy, np.full_like(yy, 0.95)], -1)
    return base + 0.02 * noise[..., None]
  if name == 'grass':
    stripes = 0.08 * np.sin(xx * rng.uniform(1.5, 2.5) * 40.0)
    return np.stack([0.2 + stripes, 0.55 + stripes, 0.15 + 0 * yy], -1) + 0.05 * noise[..., None]
  if name == 'water':
    waves = 0.08 * np.sin(yy * rng.uniform(30.0, 50.0) + 3.0 * np.sin(xx * 12.0))
    return np.stack([0.1 + 0 * yy, 0.35 + waves, 0.55 + waves], -1) + 0.03 * noise[..., None]
  if name == 'sand':
    speckle = 0.12 * (rng.random(yy.shape) > 0.85)
    return np.stack([0.85 - speckle, 0.75 - speckle, 0.45 + 0 * yy], -1) + 0.03 * noise[..., None]
  raise ValueError(f'No texture for stuff class {name!r}.')


def _new_segment_id(canvas: _Canvas, rng: np.random.Generator) -> int:
  while True:  # Random ids, as COCO's, so converters must really map them.
    segment_id = int(rng.integers(1, 256**3))
    if segment_id not in canvas.infos:
      return segment_id


def _paint_stuff(canvas: _Canvas, rng: np.random.Generator) -> None:
  """Splits the image into a sky band and one or two ground classes."""
  height, width = canvas.segments.shape
  yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing='ij')
  horizon = rng.uniform(0.25, 0.6) + 0.05 * np.sin(xx * rng.uniform(3, 9))
  regions = {'sky': yy < horizon}
  ground = rng.choice(['grass', 'water', 'sand'], size=2, replace=False)
  if rng.random() < 0.5:
    split = rng.uniform(0.3, 0.7) + 0.1 * np.sin(yy * rng.uniform(2, 6))
    regions[ground[0]] = (yy >= horizon) & (xx < split)
    regions[ground[1]] = (yy >= horizon) & (xx >= split)
  else:
    regions[ground[0]] = yy >= horizon
  for name, mask in regions.items():
    if not mask.any():
      continue
    segment_id = _new_segment_id(canvas, rng)
    canvas.image[mask] = _stuff_texture(name, yy, xx, rng)[mask]
    canvas.segments[mask] = segment_id
    canvas.infos[segment_id] = {'category_id': _category_id(name), 'iscrowd': 0}


def _shape_mask(name: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float,
                radius: float) -> np.ndarray:
  """Boolean mask of a thing shape centred at (cy, cx) with the given radius."""
  dy, dx = yy - cy, xx - cx
  if name == 'disc':
    return dy**2 + dx**2 <= radius**2
  if name == 'square':
    return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
  if name == 'triangle':
    return (dy <= radius * 0.6) & (dy >= 2.0 * np.abs(dx) - radius)
  if name == 'ring':
    distance2 = dy**2 + dx**2
    return (distance2 <= radius**2) & (distance2 >= (0.55 * radius)**2)
  raise ValueError(f'No shape for thing class {name!r}.')


def _thing_color(name: str, rng: np.random.Generator) -> np.ndarray:
  hue = (_THING_HUES[name] + rng.uniform(-0.04, 0.04)) % 1.0
  return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)))


def _paint_thing(canvas: _Canvas, name: str, cy: float, cx: float, radius: float,
                 segment_id: int, rng: np.random.Generator) -> np.ndarray:
  yy, xx = np.mgrid[:canvas.segments.shape[0], :canvas.segments.shape[1]]
  mask = _shape_mask(name, yy, xx, cy, cx, radius)
  shade = 1.0 - 0.25 * np.clip((yy - cy) / (2 * radius) + 0.5, 0, 1)[..., None]
  canvas.image[mask] = (_thing_color(name, rng) * shade)[mask]
  canvas.segments[mask] = segment_id
  return mask


def _paint_things(canvas: _Canvas, config: SyntheticConfig, rng: np.random.Generator) -> None:
  """Draws overlapping thing instances; later ones occlude earlier ones."""
  height, width = canvas.segments.shape
  scale = min(height, width) / 128.0
  outlines = []
  for _ in range(int(rng.integers(1, config.max_instances + 1))):
    name = str(rng.choice(list(_THING_HUES)))
    radius = rng.uniform(9, 22) * scale
    cy, cx = rng.uniform(radius * 0.5, height - radius * 0.5), rng.uniform(0, width)
    segment_id = _new_segment_id(canvas, rng)
    mask = _paint_thing(canvas, name, cy, cx, radius, segment_id, rng)
    canvas.infos[segment_id] = {'category_id': _category_id(name), 'iscrowd': 0}
    if rng.random() < config.void_probability:
      outlines.append(mask)
  for mask in outlines:  # A thin unlabeled border, as COCO annotations have.
    border = mask & ~np.roll(mask, 1, 0) | mask & ~np.roll(mask, 1, 1)
    canvas.segments[border] = panoptic_format.VOID_SEGMENT_ID


def _paint_crowd(canvas: _Canvas, rng: np.random.Generator) -> None:
  """A cluster of small same-class shapes annotated as one crowd segment."""
  height, width = canvas.segments.shape
  name = str(rng.choice(list(_THING_HUES)))
  cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
  segment_id = _new_segment_id(canvas, rng)
  for _ in range(int(rng.integers(3, 7))):
    _paint_thing(canvas, name, cy + rng.normal(0, 6), cx + rng.normal(0, 6),
                 rng.uniform(3, 5) * min(height, width) / 128.0, segment_id, rng)
  canvas.infos[segment_id] = {'category_id': _category_id(name), 'iscrowd': 1}


def _paint_void_patch(canvas: _Canvas, rng: np.random.Generator) -> None:
  height, width = canvas.segments.shape
  y0, x0 = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
  size_y, size_x = int(rng.integers(3, 9)), int(rng.integers(3, 9))
  canvas.image[y0:y0 + size_y, x0:x0 + size_x] = rng.random(3)
  canvas.segments[y0:y0 + size_y, x0:x0 + size_x] = panoptic_format.VOID_SEGMENT_ID


def generate_example(config: SyntheticConfig, rng: np.random.Generator
                     ) -> Tuple[np.ndarray, np.ndarray, List[Dict]]:
  """Draws one example.

  Returns:
    image: uint8 [H, W, 3].
    segments: int64 [H, W] segment ids, 0 = void.
    segments_info: COCO `segments_info` entries (id, category_id, iscrowd, area, bbox).
  """
  canvas = _Canvas(image=np.zeros((config.height, config.width, 3), np.float32),
                   segments=np.zeros((config.height, config.width), np.int64), infos={})
  _paint_stuff(canvas, rng)
  _paint_things(canvas, config, rng)
  if rng.random() < config.crowd_probability:
    _paint_crowd(canvas, rng)
  if rng.random() < config.void_probability:
    _paint_void_patch(canvas, rng)
  segments_info = []
  for segment_id, info in canvas.infos.items():
    mask = canvas.segments == segment_id
    area = int(mask.sum())
    if area < _MIN_VISIBLE_AREA:  # Fully or almost fully occluded: unlabeled.
      canvas.segments[mask] = panoptic_format.VOID_SEGMENT_ID
      continue
    segments_info.append({'id': segment_id, **info, 'area': area,
                          'bbox': panoptic_format.segment_bbox(mask)})
  image = (np.clip(canvas.image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return image, canvas.segments, segments_info


def write_split(output_dir: str, split: str, num_images: int, config: SyntheticConfig,
                seed: int) -> str:
  """Writes one split in the COCO panoptic layout and returns its JSON path."""
  split_index = {'train': 0, 'val': 1}.get(split, 2)
  image_dir = os.path.join(output_dir, split)
  png_dir = os.path.join(output_dir, 'annotations', f'panoptic_{split}')
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(png_dir, exist_ok=True)
  images, annotations = [], []
  for index in range(num_images):
    rng = np.random.default_rng([seed, split_index, index])
    image, segments, segments_info = generate_example(config, rng)
    image_id = split_index * 1_000_000 + index + 1
    name = f'{image_id:012d}'
    Image.fromarray(image).save(os.path.join(image_dir, name + '.jpg'), quality=95)
    Image.fromarray(panoptic_format.id_to_rgb(segments)).save(
        os.path.join(png_dir, name + '.png'))
    images.append({'id': image_id, 'file_name': name + '.jpg',
                   'height': config.height, 'width': config.width})
    annotations.append({'image_id': image_id, 'file_name': name + '.png',
                        'segments_info': segments_info})
  json_path = os.path.join(output_dir, 'annotations', f'panoptic_{split}.json')
  with open(json_path, 'w') as f:
    json.dump({'images': images, 'annotations': annotations,
               'categories': _categories()}, f)
  return json_path


FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.height < 32 or FLAGS.width < 32:
    raise app.UsageError(f'--height and --width must be >= 32, got '
                         f'{FLAGS.height}x{FLAGS.width}.')
  config = SyntheticConfig(height=FLAGS.height, width=FLAGS.width,
                           max_instances=FLAGS.max_instances,
                           crowd_probability=FLAGS.crowd_probability)
  for split, count in (('train', FLAGS.num_train), ('val', FLAGS.num_val)):
    path = write_split(FLAGS.output_dir, split, count, config, FLAGS.seed)
    print(f'Wrote {count} {split} images; annotations in {path}')


def _define_flags():
  flags.DEFINE_string('output_dir', None, 'Where to write the data set.')
  flags.DEFINE_integer('num_train', 96, 'Number of training images.')
  flags.DEFINE_integer('num_val', 24, 'Number of validation images.')
  flags.DEFINE_integer('height', 128, 'Image height.')
  flags.DEFINE_integer('width', 128, 'Image width.')
  flags.DEFINE_integer('max_instances', 5, 'Most thing instances per image.')
  flags.DEFINE_float('crowd_probability', 0.15, 'Chance that an image has a crowd region.')
  flags.DEFINE_integer('seed', 0, 'Random seed; the same seed writes the same data set.')


def run():
  _define_flags()
  flags.mark_flag_as_required('output_dir')
  cli.run_main(main)


if __name__ == '__main__':
  run()
