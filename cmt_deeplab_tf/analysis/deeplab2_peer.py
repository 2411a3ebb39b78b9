"""DeepLab2's MaX-DeepLab-S, built from its public source: the peer of our step benchmarks.

DeepLab2 (github.com/google-research/deeplab2) is not a dependency. Give the
folder that holds its `deeplab2` package with the protos compiled
(`../shared/tools/setup_deeplab2.sh` prepares one, README "DeepLab2 as a peer"),
and run with TF_USE_LEGACY_KERAS=1, so DeepLab2's Keras imports give Keras 2 like ours
(`peak_memory` sets it for its fresh process).

The model is DeepLab2's COCO MaX-DeepLab-S as its textproto
`max_deeplab_s_os16_res641_400k` defines it (axial blocks recomputed, its
default), with the crop set to the measured size and unsynchronised batch norm
(one replica). Its step is DeepLab2's training step without the update: the
forward pass in training mode, DeepLab2's own loss (`DeepLabFamilyLoss`, built
from the textproto's loss options as its trainer builds it: PQ-style, mask-ID
cross-entropy, instance discrimination and semantic terms, Hungarian matching
in the graph), the mean of its total loss, and the gradients of every trainable
variable. Its targets are made from the same random block label as ours
(`cost.random_block_label`) in DeepLab2's format (`deeplab2_targets`), so both
steps match masks of the same layout.

`python -m cmt_deeplab_tf.analysis.deeplab2_peer PATH HEIGHT WIDTH` is the fresh
process of the memory measurement; it prints one JSON line like
`cost.measure_training_step_memory`.
"""
import dataclasses
import json
import os
import sys
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.analysis import cost

CONFIG = 'configs/coco/max_deeplab/max_deeplab_s_os16_res641_400k.textproto'
DATASET = 'coco_panoptic'
NAME = 'deeplab2_max_deeplab_s'
# DeepLab2's models import Keras through TensorFlow; under TF 2.20 this makes it Keras 2.
LEGACY_KERAS = {'TF_USE_LEGACY_KERAS': '1'}
PEER_PEAK_RSS = ('peak RSS increase of a fresh process from after its imports to after '
                 "one step of DeepLab2's MaX-DeepLab-S (model build, trace, forward, "
                 'its loss, backward)')
# DeepLab2's names of the targets its MaX-DeepLab loss reads (deeplab2/common.py).
SEMANTIC, THING_ID_MASK, THING_ID_CLASS, SEMANTIC_WEIGHT = (
    'semantic_gt', 'thing_id_mask_gt', 'thing_id_class_gt', 'semantic_loss_weight')
TOTAL_LOSS = 'total_loss'


def check_path(path: str, flag: str = '--deeplab2_path') -> str:
  """`path` if it holds DeepLab2 with compiled protos, else a ValueError naming `flag`."""
  if not os.path.isfile(os.path.join(path, 'deeplab2', 'config_pb2.py')):
    raise ValueError(
        f'{flag}={path} has no deeplab2/config_pb2.py: give the folder holding the '
        'deeplab2 package with its protos compiled (../shared/tools/setup_deeplab2.sh).')
  return os.path.abspath(path)


def import_deeplab2(path: str) -> Dict[str, object]:
  """DeepLab2's modules the peer needs, imported from `path`."""
  if os.environ.get('TF_USE_LEGACY_KERAS') != '1':
    raise RuntimeError('DeepLab2 needs TF_USE_LEGACY_KERAS=1 in the environment '
                       '(set before TensorFlow is imported).')
  path = check_path(path)
  if path not in sys.path:
    sys.path.insert(0, path)
  # pylint: disable=g-import-not-at-top
  from deeplab2 import config_pb2
  from deeplab2.data import dataset
  from deeplab2.model import deeplab
  from deeplab2.model.loss import loss_builder
  from google.protobuf import text_format
  # pylint: enable=g-import-not-at-top
  return dict(path=path, config_pb2=config_pb2, dataset=dataset, deeplab=deeplab,
              loss_builder=loss_builder, text_format=text_format)


@dataclasses.dataclass
class Peer:
  """DeepLab2's MaX-DeepLab-S at one crop, its loss, and one batch for its step.

  Attributes:
    model: DeepLab2's `DeepLab` model, variables created.
    loss: DeepLab2's `DeepLabFamilyLoss`: (targets, outputs) -> {term: [B]},
      with TOTAL_LOSS.
    images: float32 [1, H, W, 3] in DeepLab2's input range, 0..255.
    targets: `deeplab2_targets` of the probes' random block label.
  """
  model: tf.Module
  loss: Callable[[Dict[str, tf.Tensor], Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]
  images: tf.Tensor
  targets: Dict[str, tf.Tensor]


def build(path: str, height: int, width: int, seed: int = 0) -> Peer:
  """DeepLab2's COCO MaX-DeepLab-S for a `height` x `width` crop, with its loss."""
  dl2 = import_deeplab2(path)
  with open(os.path.join(dl2['path'], 'deeplab2', CONFIG)) as f:
    config = dl2['text_format'].Parse(f.read(), dl2['config_pb2'].ExperimentOptions())
  config.trainer_options.solver_options.use_sync_batchnorm = False
  del config.train_dataset_options.crop_size[:]
  config.train_dataset_options.crop_size.extend([height, width])
  info = dl2['dataset'].MAP_NAME_TO_DATASET_INFO[DATASET]
  model = dl2['deeplab'].DeepLab(config, info)
  # The variables come from tracing a forward pass, never run: an eager full-size
  # pass would put an inference peak before the step (ours are built from a small
  # image, `task.create_all_variables`; DeepLab2's axial layers fix their size).
  tf.function(lambda images: model(images, training=False)).get_concrete_function(
      tf.TensorSpec([1, height, width, 3], tf.float32))
  loss = dl2['loss_builder'].DeepLabFamilyLoss(
      loss_options=config.trainer_options.loss_options,
      deeplab_options=config.model_options, num_classes=info.num_classes,
      ignore_label=info.ignore_label, ignore_depth=None,
      thing_class_ids=info.class_has_instances_list,
      auxiliary_output_number=model.auxiliary_output_number)
  # Our probes' label, its classes 0..132 as DeepLab2's COCO ids 1..133 (0: void);
  # its MaX-S has 128 mask slots (`num_mask_slots`, the default).
  classes, instances = cost.random_block_label(height, width, info.num_classes - 1, seed)
  targets = deeplab2_targets(classes + 1, instances, info.class_has_instances_list,
                             info.ignore_label)
  return Peer(model, loss, random_images(height, width, seed), targets)


def deeplab2_targets(semantic: np.ndarray, instances: np.ndarray,
                     thing_classes: Sequence[int], ignore_label: int,
                     max_thing_id: int = 128, num_mask_slots: int = 128
                     ) -> Dict[str, tf.Tensor]:
  """A batch-1 target of DeepLab2's MaX-DeepLab loss, as its sample generator makes it.

  Args:
    semantic: int [H, W] DeepLab2 class ids.
    instances: int [H, W] instance ids; a thing mask is one (class, instance)
      pair of a class in `thing_classes`.
    thing_classes: The dataset's classes with instances.
    ignore_label: The dataset's void class.
    max_thing_id: Thing masks DeepLab2 holds (its sample generator's 128).
    num_mask_slots: The model's mask slots: at most this many masks (things
      and stuff classes) are kept, as our targets keep `max_num_masks`.

  Returns:
    SEMANTIC int32 [1, H, W]; THING_ID_MASK int32 [1, H, W], the thing masks
    numbered from 0 in order of first appearance (raster order), -1 elsewhere;
    THING_ID_CLASS float32 [1, max_thing_id], each number's class, -1 after the
    last; SEMANTIC_WEIGHT float32 [1, H, W] ones. Things past `max_thing_id`,
    or past the slots the stuff classes leave, become void.
  """
  semantic = np.array(semantic, np.int32)
  thing_mask = np.full(semantic.shape, -1, np.int32)
  thing_class = np.full([max_thing_id], -1.0, np.float32)
  is_thing = np.isin(semantic, list(thing_classes))
  stuff = set(np.unique(semantic[~is_thing]).tolist()) - {ignore_label}
  max_things = min(max_thing_id, num_mask_slots - len(stuff))
  pairs = np.stack([semantic[is_thing], np.asarray(instances)[is_thing]], axis=-1)
  _, first, numbers = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
  by_appearance = np.argsort(np.argsort(first))  # Sorted pair -> its number.
  numbers = by_appearance[numbers.reshape(-1)]
  kept = numbers < max_things
  thing_mask[tuple(index[kept] for index in np.nonzero(is_thing))] = numbers[kept]
  semantic[tuple(index[~kept] for index in np.nonzero(is_thing))] = ignore_label
  thing_class[numbers[kept]] = pairs[kept, 0]
  return {SEMANTIC: tf.constant(semantic[np.newaxis]),
          THING_ID_MASK: tf.constant(thing_mask[np.newaxis]),
          THING_ID_CLASS: tf.constant(thing_class[np.newaxis]),
          SEMANTIC_WEIGHT: tf.ones((1,) + semantic.shape, tf.float32)}


def train_step(peer: Peer) -> Callable[[], tf.Tensor]:
  """A `tf.function` () -> (mean total loss, sum of the gradients): DeepLab2's
  training step (its trainer's forward, loss and gradients) without the update;
  the gradients of every trainable variable are summed, so none is pruned."""

  @tf.function
  def step(images, targets):
    with tf.GradientTape() as tape:
      losses = peer.loss(targets, peer.model(images, training=True))
      total = tf.reduce_mean(losses[TOTAL_LOSS])
    gradients = tape.gradient(total, peer.model.trainable_variables)
    return total, tf.add_n([tf.reduce_sum(g) for g in gradients if g is not None])
  return lambda: step(peer.images, peer.targets)


def random_images(height: int, width: int, seed: int = 0) -> tf.Tensor:
  """A batch-1 image in DeepLab2's input range, 0..255."""
  return tf.random.uniform([1, height, width, 3], 0.0, 255.0, seed=seed)


def measure_memory(path: str, height: int, width: int) -> Dict[str, object]:
  """In this process: the peak-RSS growth of building the peer and one step
  (DeepLab2's modules imported before, as ours are)."""
  import_deeplab2(path)
  rss_before = cost.max_rss_bytes()
  peer = build(path, height, width)
  rss_built = cost.max_rss_bytes()
  total, _ = train_step(peer)()
  rss_after = cost.max_rss_bytes()
  return {'loss': float(total), 'bytes': rss_after - rss_before,
          'step_bytes': rss_after - rss_built, 'what': PEER_PEAK_RSS}


def peak_memory(path: str, height: int, width: int,
                memory_limit_bytes: Optional[int] = None) -> Dict[str, object]:
  """`measure_memory` in a fresh process (see `cost.run_fresh_process`)."""
  command = [sys.executable, '-m', __name__, check_path(path), str(height), str(width)]
  return cost.run_fresh_process(command, memory_limit_bytes,
                                f'Memory probe of {NAME} at {height}x{width}',
                                env=LEGACY_KERAS)


if __name__ == '__main__':
  print(json.dumps(measure_memory(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))),
        flush=True)
