"""Class tables of the supported data sets, in contiguous train ids.

Train ids are 0..C-1; `IGNORE_LABEL` (255) is void. A panoptic id is
`train_id * label_divisor + instance`. COCO train ids follow the category ids in
increasing order (so the 80 thing classes come first, then the 53 stuff classes),
as in COCO panoptic's `panoptic_coco_categories.json`. Cityscapes train ids are the
19 evaluation classes of cityscapesscripts' `labels.py`.
"""
import dataclasses
from typing import Tuple

from cmt_deeplab_tf import common


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


def get_dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` registered under `name` (coco, cityscapes, synthetic)."""
  if name not in _REGISTRY:
    raise ValueError(f'Unknown dataset name {name!r}; known: {sorted(_REGISTRY)}.')
  return _REGISTRY[name]
