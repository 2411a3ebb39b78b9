"""Model dirs of untrained runs (operative config + checkpoint) for CLI tests."""
import os

import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.modeling import builder


def write_untrained_run(model_dir: str, operative_config: str, num_classes: int,
                        num_clusters: int, step: int = 1, info=None,
                        **extra_checkpoint_items):
  """Writes `operative_config.gin`, the class table (`info`, default the synthetic
  set's) and a checkpoint of a fresh seeded `tiny` model.

  Returns:
    The model, as saved.
  """
  with open(os.path.join(model_dir, 'operative_config.gin'), 'w') as f:
    f.write(operative_config)
  class_table.write_class_table(
      model_dir, info or dataset_info.get_dataset_info('synthetic'))
  # Seeds Python, NumPy and TF: Keras draws unseeded initializer seeds from Python's RNG.
  tf_keras.utils.set_random_seed(0)
  model = builder.build_model('tiny', num_classes, num_clusters)
  model(tf.zeros([1, 65, 65, 3]), training=False)
  tf.train.CheckpointManager(tf.train.Checkpoint(model=model, **extra_checkpoint_items),
                             model_dir, max_to_keep=1).save(checkpoint_number=step)
  return model
