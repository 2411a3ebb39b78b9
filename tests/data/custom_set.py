"""A COCO-panoptic-format data set that is not built in, for the custom-data tests.

The synthetic generator's shapes relabelled: category ids 3, 5, 8, 17, 64, 90,
240, 1001 (non-contiguous, listed out of order in the JSON), two thing classes
and six stuff classes (triangles and rings become stuff, each class one segment
per image as COCO annotates stuff), crowd segments of the thing classes kept.
"""
import json
import os

from PIL import Image

from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import synthetic

# synthetic category name -> (new id, isthing).
RELABEL = {'disc': (1001, True), 'square': (3, True), 'triangle': (17, False),
           'ring': (90, False), 'sky': (240, False), 'grass': (5, False),
           'water': (64, False), 'sand': (8, False)}
NAME = 'my_shapes'


def write(root: str, num_images: dict, size: int, seed: int = 0) -> dict:
  """Writes the splits {name: count} under root; returns {split: json path}."""
  config = synthetic.SyntheticConfig(height=size, width=size, crowd_probability=0.6)
  paths = {}
  for split, count in num_images.items():
    paths[split] = synthetic.write_split(root, split, count, config, seed)
    _relabel(paths[split])
  return paths


def _relabel(json_path: str) -> None:
  with open(json_path) as f:
    data = json.load(f)
  old = {c['id']: c['name'] for c in data['categories']}
  png_dir = os.path.splitext(json_path)[0]
  for annotation in data['annotations']:
    png_path = os.path.join(png_dir, annotation['file_name'])
    ids = panoptic_format.read_segment_ids(png_path)
    merged = {}  # new stuff category id -> the segment that absorbs the others.
    segments = []
    for segment in annotation['segments_info']:
      category_id, is_thing = RELABEL[old[segment['category_id']]]
      segment = dict(segment, category_id=category_id)
      if not is_thing:
        segment['iscrowd'] = 0
        if category_id in merged:
          ids[ids == segment['id']] = merged[category_id]['id']
          continue
        merged[category_id] = segment
      segments.append(segment)
    for segment in segments:
      mask = ids == segment['id']
      segment['area'] = int(mask.sum())
      segment['bbox'] = panoptic_format.segment_bbox(mask)
    annotation['segments_info'] = segments
    Image.fromarray(panoptic_format.id_to_rgb(ids)).save(png_path)
  data['categories'] = [{'id': i, 'name': name, 'isthing': int(t)}
                        for name, (i, t) in reversed(list(RELABEL.items()))]
  with open(json_path, 'w') as f:
    json.dump(data, f)
