"""DeepLab2's MaX-DeepLab-S, built from its public source: the peer of our step benchmarks.

DeepLab2 (github.com/google-research/deeplab2) is not a dependency. Give the
folder that holds its `deeplab2` package with the protos compiled
(`../shared/tools/setup_deeplab2.sh` prepares one, README "DeepLab2 as a peer"),
and run with TF_USE_LEGACY_KERAS=1, so DeepLab2's Keras imports give Keras 2 like ours
(`peak_memory` sets it for its fresh process).

The model is DeepLab2's COCO MaX-DeepLab-S as its textproto
`max_deeplab_s_os16_res641_400k` defines it (axial blocks recomputed, its
default), with the crop set to the measured size and unsynchronised batch norm
(one replica). Its step is the forward pass in training mode and the gradients
of every trainable variable of `output_objective`, the sum of the means of its
floating outputs: DeepLab2's MaX-DeepLab loss needs its own input pipeline's
targets, so its loss is left out, which can only flatter the peer (our probe of
the same mode, `cost.FORWARD_BACKWARD`, includes our whole PanopticLoss).

`python -m cmt_deeplab_tf.analysis.deeplab2_peer PATH HEIGHT WIDTH` is the fresh
process of the memory measurement; it prints one JSON line like
`cost.measure_training_step_memory`.
"""
import json
import os
import sys
from typing import Callable, Dict, Optional

import tensorflow as tf

from cmt_deeplab_tf.analysis import cost

CONFIG = 'configs/coco/max_deeplab/max_deeplab_s_os16_res641_400k.textproto'
DATASET = 'coco_panoptic'
NAME = 'deeplab2_max_deeplab_s'
# DeepLab2's models import Keras through TensorFlow; under TF 2.20 this makes it Keras 2.
LEGACY_KERAS = {'TF_USE_LEGACY_KERAS': '1'}
PEER_PEAK_RSS = ('peak RSS increase of a fresh process from after its imports to after '
                 "one step of DeepLab2's MaX-DeepLab-S (model build, trace, forward, "
                 'output objective, backward)')


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
  from google.protobuf import text_format
  # pylint: enable=g-import-not-at-top
  return dict(path=path, config_pb2=config_pb2, dataset=dataset, deeplab=deeplab,
              text_format=text_format)


def build_max_deeplab_s(path: str, height: int, width: int) -> tf.Module:
  """DeepLab2's COCO MaX-DeepLab-S for a `height` x `width` crop, variables created."""
  dl2 = import_deeplab2(path)
  with open(os.path.join(dl2['path'], 'deeplab2', CONFIG)) as f:
    config = dl2['text_format'].Parse(f.read(), dl2['config_pb2'].ExperimentOptions())
  config.trainer_options.solver_options.use_sync_batchnorm = False
  del config.train_dataset_options.crop_size[:]
  config.train_dataset_options.crop_size.extend([height, width])
  model = dl2['deeplab'].DeepLab(config, dl2['dataset'].MAP_NAME_TO_DATASET_INFO[DATASET])
  # The variables come from tracing a forward pass, never run: an eager full-size
  # pass would put an inference peak before the step (ours are built from a small
  # image, `task.create_all_variables`; DeepLab2's axial layers fix their size).
  tf.function(lambda images: model(images, training=False)).get_concrete_function(
      tf.TensorSpec([1, height, width, 3], tf.float32))
  return model


def output_objective(outputs: Dict[str, tf.Tensor]) -> tf.Tensor:
  """Sum over the floating outputs of their means: a scalar that reaches every output."""
  return tf.add_n([tf.reduce_mean(value) for value in tf.nest.flatten(outputs)
                   if tf.is_tensor(value) and value.dtype.is_floating])


def forward_backward(model: tf.Module) -> Callable[[tf.Tensor], tf.Tensor]:
  """A `tf.function` images [1, H, W, 3] in 0..255 -> `output_objective`, with
  the gradients of every trainable variable computed (and summed, so none is pruned)."""

  @tf.function
  def step(images):
    with tf.GradientTape() as tape:
      objective = output_objective(model(images, training=True))
    gradients = tape.gradient(objective, model.trainable_variables)
    return objective, tf.add_n([tf.reduce_sum(g) for g in gradients if g is not None])
  return step


def random_images(height: int, width: int, seed: int = 0) -> tf.Tensor:
  """A batch-1 image in DeepLab2's input range, 0..255."""
  return tf.random.uniform([1, height, width, 3], 0.0, 255.0, seed=seed)


def measure_memory(path: str, height: int, width: int) -> Dict[str, object]:
  """In this process: the peak-RSS growth of building the peer and one step
  (DeepLab2's modules imported before, as ours are)."""
  import_deeplab2(path)
  rss_before = cost.max_rss_bytes()
  model = build_max_deeplab_s(path, height, width)
  rss_built = cost.max_rss_bytes()
  objective, _ = forward_backward(model)(random_images(height, width))
  rss_after = cost.max_rss_bytes()
  return {'loss': float(objective), 'bytes': rss_after - rss_before,
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
