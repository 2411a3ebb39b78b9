"""Class tables of panoptic data sets, in contiguous train ids.

Train ids are 0..C-1; `IGNORE_LABEL` (255) is void. A panoptic id is
`train_id * label_divisor + instance`. COCO train ids follow the category ids in
increasing order (so the 80 thing classes come first, then the 53 stuff classes),
as in COCO panoptic's `panoptic_coco_categories.json`. Cityscapes train ids are the
19 evaluation classes of cityscapesscripts' `labels.py`.

Three tables are built in (coco, cityscapes, synthetic). Any other data set in the
COCO panoptic format gets its table from its JSON's `categories`
(`from_categories`). `class_table` stores tables as JSON files beside the shards
and in run directories.
"""
import dataclasses
from typing import Dict, Sequence, Tuple

from cmt_deeplab_tf import common

# Panoptic ids are stored as 24-bit RGB PNGs (`tfrecord_format`).
_MAX_PANOPTIC_ID = 256**3 - 1
_MIN_LABEL_DIVISOR = 256


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model, losses and evaluation need to know about a data set.

  Attributes:
    name: data set name.
    class_names: name of each train id.
    is_thing: whether each train id is a thing class (countable instances).
    label_divisor: panoptic id = semantic * label_divisor + instance.
    source_ids: the data set's own id of each train id (COCO category id,
      Cityscapes label id), used by the converters and submission writers.
    ignore_label: semantic value of void pixels.
  """
  name: str
  class_names: Tuple[str, ...]
  is_thing: Tuple[bool, ...]
  label_divisor: int
  source_ids: Tuple[int, ...]
  ignore_label: int = common.IGNORE_LABEL

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def thing_ids(self) -> Tuple[int, ...]:
    return tuple(i for i, t in enumerate(self.is_thing) if t)

  @property
  def stuff_ids(self) -> Tuple[int, ...]:
    return tuple(i for i, t in enumerate(self.is_thing) if not t)

  def to_json(self) -> Dict[str, object]:
    """The table as `CLASS_TABLE_FILE` stores it: name, label_divisor, categories."""
    return {'name': self.name, 'label_divisor': self.label_divisor,
            'ignore_label': self.ignore_label,
            'categories': [{'id': i, 'name': n, 'isthing': int(t)} for i, n, t in zip(
                self.source_ids, self.class_names, self.is_thing)]}


# (category id, name, isthing) of COCO panoptic's 133 categories.
_COCO_THINGS = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'),
    (6, 'bus'), (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'),
    (11, 'fire hydrant'), (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'),
    (16, 'bird'), (17, 'cat'), (18, 'dog'), (19, 'horse'), (20, 'sheep'),
    (21, 'cow'), (22, 'elephant'), (23, 'bear'), (24, 'zebra'), (25, 'giraffe'),
    (27, 'backpack'), (28, 'umbrella'), (31, 'handbag'), (32, 'tie'),
    (33, 'suitcase'), (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'),
    (37, 'sports ball'), (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'), (44, 'bottle'),
    (46, 'wine glass'), (47, 'cup'), (48, 'fork'), (49, 'knife'), (50, 'spoon'),
    (51, 'bowl'), (52, 'banana'), (53, 'apple'), (54, 'sandwich'), (55, 'orange'),
    (56, 'broccoli'), (57, 'carrot'), (58, 'hot dog'), (59, 'pizza'), (60, 'donut'),
    (61, 'cake'), (62, 'chair'), (63, 'couch'), (64, 'potted plant'), (65, 'bed'),
    (67, 'dining table'), (70, 'toilet'), (72, 'tv'), (73, 'laptop'), (74, 'mouse'),
    (75, 'remote'), (76, 'keyboard'), (77, 'cell phone'), (78, 'microwave'),
    (79, 'oven'), (80, 'toaster'), (81, 'sink'), (82, 'refrigerator'), (84, 'book'),
    (85, 'clock'), (86, 'vase'), (87, 'scissors'), (88, 'teddy bear'),
    (89, 'hair drier'), (90, 'toothbrush'))
_COCO_STUFF = (
    (92, 'banner'), (93, 'blanket'), (95, 'bridge'), (100, 'cardboard'),
    (107, 'counter'), (109, 'curtain'), (112, 'door-stuff'), (118, 'floor-wood'),
    (119, 'flower'), (122, 'fruit'), (125, 'gravel'), (128, 'house'), (130, 'light'),
    (133, 'mirror-stuff'), (138, 'net'), (141, 'pillow'), (144, 'platform'),
    (145, 'playingfield'), (147, 'railroad'), (148, 'river'), (149, 'road'),
    (151, 'roof'), (154, 'sand'), (155, 'sea'), (156, 'shelf'), (159, 'snow'),
    (161, 'stairs'), (166, 'tent'), (168, 'towel'), (171, 'wall-brick'),
    (175, 'wall-stone'), (176, 'wall-tile'), (177, 'wall-wood'), (178, 'water-other'),
    (180, 'window-blind'), (181, 'window-other'), (184, 'tree-merged'),
    (185, 'fence-merged'), (186, 'ceiling-merged'), (187, 'sky-other-merged'),
    (188, 'cabinet-merged'), (189, 'table-merged'), (190, 'floor-other-merged'),
    (191, 'pavement-merged'), (192, 'mountain-merged'), (193, 'grass-merged'),
    (194, 'dirt-merged'), (195, 'paper-merged'), (196, 'food-other-merged'),
    (197, 'building-other-merged'), (198, 'rock-merged'), (199, 'wall-other-merged'),
    (200, 'rug-merged'))

# (label id, name, isthing) of the 19 Cityscapes evaluation classes, in train-id order.
_CITYSCAPES = (
    (7, 'road', False), (8, 'sidewalk', False), (11, 'building', False),
    (12, 'wall', False), (13, 'fence', False), (17, 'pole', False),
    (19, 'traffic light', False), (20, 'traffic sign', False),
    (21, 'vegetation', False), (22, 'terrain', False), (23, 'sky', False),
    (24, 'person', True), (25, 'rider', True), (26, 'car', True),
    (27, 'truck', True), (28, 'bus', True), (31, 'train', True),
    (32, 'motorcycle', True), (33, 'bicycle', True))

# The built-in synthetic set (`cmt_deeplab_tf.data.synthetic`): category id, name,
# isthing. Things are drawn shapes; stuff are textured background regions.
SYNTHETIC_CATEGORIES = (
    (1, 'disc', True), (2, 'square', True), (3, 'triangle', True),
    (4, 'ring', True), (5, 'sky', False), (6, 'grass', False),
    (7, 'water', False), (8, 'sand', False))


def _make(name, triples, label_divisor):
  return DatasetInfo(
      name=name,
      class_names=tuple(n for _, n, _ in triples),
      is_thing=tuple(bool(t) for _, _, t in triples),
      label_divisor=label_divisor,
      source_ids=tuple(i for i, _, _ in triples))


_COCO_TRIPLES = tuple((i, n, True) for i, n in _COCO_THINGS) + tuple(
    (i, n, False) for i, n in _COCO_STUFF)

_REGISTRY = {
    # COCO images hold fewer than 256 instances of a class; DeepLab2 uses 256 too.
    'coco': _make('coco', _COCO_TRIPLES, label_divisor=256),
    'cityscapes': _make('cityscapes', _CITYSCAPES, label_divisor=1000),
    'synthetic': _make('synthetic', SYNTHETIC_CATEGORIES, label_divisor=256),
}


BUILT_IN = tuple(sorted(_REGISTRY))


def get_dataset_info(name: str) -> DatasetInfo:
  """Returns the built-in `DatasetInfo` named `name` (coco, cityscapes, synthetic).

  Other data sets have no built-in table: read theirs with `read_class_table`.
  """
  if name not in _REGISTRY:
    raise ValueError(f'{name!r} is not a built-in data set ({list(BUILT_IN)}); the class '
                     'table of any other data set is the class_table.json that '
                     'convert_coco writes beside its shards.')
  return _REGISTRY[name]


def from_categories(name: str, categories: Sequence[Dict], label_divisor: int,
                    source: str = 'categories') -> DatasetInfo:
  """The class table of a COCO panoptic JSON's `categories`.

  Train ids follow increasing category id (any ids, any number up to 255, things
  and stuff in any mix), as for COCO.

  Args:
    name: the data set's name.
    categories: [{id, name, isthing}, ...].
    label_divisor: panoptic id = train id * label_divisor + instance.
    source: the file the categories come from, for error messages.

  Raises:
    ValueError: naming `source` and the category, on a missing field, a duplicate
      id, more than 255 classes, or ids that do not fit the 24-bit panoptic PNG.
  """
  if not categories:
    raise ValueError(f'{source}: `categories` is empty.')
  for index, category in enumerate(categories):
    for field in ('id', 'name', 'isthing'):
      if field not in category:
        raise ValueError(f'{source}: categories[{index}] ({category}) has no {field!r} '
                         'field (every category must say whether it is a thing).')
  ids = [int(c['id']) for c in categories]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  if duplicates:
    raise ValueError(f'{source}: duplicate category ids {duplicates} in `categories`.')
  ordered = sorted(categories, key=lambda c: int(c['id']))
  info = DatasetInfo(name=name, class_names=tuple(str(c['name']) for c in ordered),
                     is_thing=tuple(bool(c['isthing']) for c in ordered),
                     label_divisor=int(label_divisor),
                     source_ids=tuple(int(c['id']) for c in ordered))
  check_class_table(info, source)
  return info


def check_class_table(info: DatasetInfo, source: str) -> None:
  """Checks that train ids, void and the label divisor fit the panoptic encoding."""
  if not 0 < info.num_classes <= info.ignore_label:
    raise ValueError(f'{source}: {info.num_classes} classes; train ids must stay below '
                     f'the ignore label {info.ignore_label}.')
  if not len(info.is_thing) == len(info.source_ids) == info.num_classes:
    raise ValueError(f'{source}: class names, isthing flags and category ids differ in '
                     'number.')
  if info.label_divisor < 2 or info.ignore_label * info.label_divisor > _MAX_PANOPTIC_ID:
    raise ValueError(f'{source}: label_divisor={info.label_divisor} must lie in [2, '
                     f'{_MAX_PANOPTIC_ID // info.ignore_label}] (24-bit panoptic ids).')


def label_divisor_for(max_instances: int) -> int:
  """The smallest power of two >= 256 above `max_instances`.

  Args:
    max_instances: the most instances of one class in one image.
  """
  divisor = _MIN_LABEL_DIVISOR
  while divisor <= max_instances:
    divisor *= 2
  return divisor


def from_json(data: Dict, source: str) -> DatasetInfo:
  """Reads a table written by `DatasetInfo.to_json`; errors name `source`."""
  for field in ('name', 'label_divisor', 'categories'):
    if field not in data:
      raise ValueError(f'{source} has no {field!r} field; is it a class table?')
  info = from_categories(data['name'], data['categories'], data['label_divisor'], source)
  return dataclasses.replace(info, ignore_label=int(data.get('ignore_label',
                                                             info.ignore_label)))


def describe(info: DatasetInfo) -> str:
  return (f'{info.name!r} ({info.num_classes} classes, {len(info.thing_ids)} things, '
          f'label divisor {info.label_divisor})')
