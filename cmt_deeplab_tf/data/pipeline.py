"""The gin-configured tf.data input pipeline over panoptic TFRecords or TFDS.

    shards --interleave--> decode --augment (train) / fit + pad (eval)--> targets
           --batch--> prefetch

The examples come from the converters' TFRecord shards (`file_pattern`) or from
a prepared TFDS builder (`tfds_source`); both decode to the same pixels and
train-id labels, and share every later step.

Every element has static shapes (TPU): images and maps are `crop_size`, the
ground-truth lists have `max_num_masks` slots. Under a distribution strategy pass
the `tf.distribute.InputContext`: each input pipeline reads its own subset of the
shards and batches `per-replica batch size` examples.
"""
import glob
from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import record_errors
from cmt_deeplab_tf.data import targets as targets_lib
from cmt_deeplab_tf.data import tfds_source as tfds_source_lib
from cmt_deeplab_tf.data import tfrecord_format

_LABEL_DIVISOR = 'label_divisor'


def check_crop_size(crop_size: Sequence[int], stride: int = 32,
                    flag: str = 'crop_size') -> None:
  """Crops must be `stride * k + 1` (e.g. 641, 1025, 2049) to align all strides."""
  if len(crop_size) != 2 or any((s - 1) % stride or s <= 1 for s in crop_size):
    raise ValueError(
        f'{flag}={list(crop_size)} violates the model\'s stride constraint: each side must '
        f'be {stride} * k + 1 (e.g. 129, 641, 1025, 2049).')


def list_shards(file_pattern: str) -> Sequence[str]:
  """Expands a comma-separated list of glob patterns; errors if nothing matches."""
  files = []
  for pattern in file_pattern.split(','):
    matched = sorted(glob.glob(pattern.strip()))
    if not matched:
      raise ValueError(f'file_pattern {pattern.strip()!r} matches no file.')
    files.extend(matched)
  return files


def _train_example(decoded: Dict[str, tf.Tensor], seed: tf.Tensor, crop_size, min_scale,
                   max_scale, scale_step, void_value) -> Dict[str, tf.Tensor]:
  seeds = tf.random.experimental.stateless_split(seed, 3)
  image = tf.cast(decoded['image'], tf.float32)
  label = decoded['panoptic']
  image, label = augment.random_scale(image, label, min_scale, max_scale, scale_step,
                                      seeds[0])
  image, label = augment.random_crop(image, label, crop_size, void_value, seeds[1])
  image, label = augment.random_flip(image, label, seeds[2])
  return {'image': image, 'panoptic': label}


def _eval_example(decoded: Dict[str, tf.Tensor], crop_size,
                  void_value) -> Dict[str, tf.Tensor]:
  original_size = tf.shape(decoded['panoptic'])
  image, label, valid_size = augment.fit_to_size(decoded['image'], decoded['panoptic'],
                                                 *crop_size)
  image, label = augment.pad_pair(image, label, *crop_size, void_value)
  return {'image': tf.ensure_shape(image, list(crop_size) + [3]),
          'panoptic': tf.ensure_shape(label, crop_size),
          common.VALID_SIZE: valid_size, common.ORIGINAL_SIZE: original_size}


def _tfrecord_examples(file_pattern: str, is_training: bool, cycle_length: int,
                       deterministic: bool, seed: Optional[int],
                       input_context: Optional[tf.distribute.InputContext]
                       ) -> tf.data.Dataset:
  """Serialized examples of the shards, this input pipeline's share."""
  files = list_shards(file_pattern)
  if input_context and input_context.num_input_pipelines > 1:
    if len(files) < input_context.num_input_pipelines:
      raise ValueError(f'file_pattern {file_pattern!r} has {len(files)} shards, fewer '
                       f'than the {input_context.num_input_pipelines} input pipelines.')
    files = files[input_context.input_pipeline_id::input_context.num_input_pipelines]
  dataset = tf.data.Dataset.from_tensor_slices(
      (files, record_errors.shard_sizes(files)))
  if is_training:
    dataset = dataset.shuffle(len(files), seed=seed).repeat()
  return dataset.interleave(
      record_errors.read_shard, cycle_length=min(cycle_length, len(files)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or not is_training)


# Set by the caller from `ExperimentConfig` (train_lib): binding them here is a
# parse-time error.
@gin.configurable(denylist=['file_pattern', 'dataset_info', 'is_training',
                            'batch_size', 'crop_size', 'max_num_masks', 'seed',
                            'tfds_source', 'skip_batches', 'input_context'])
def panoptic_dataset(file_pattern: Optional[str] = None,
                     dataset_info: Optional[dataset_info_lib.DatasetInfo] = None,
                     is_training: bool = True,
                     batch_size: int = 8,
                     crop_size: Sequence[int] = (641, 641),
                     min_scale: float = 0.5,
                     max_scale: float = 1.5,
                     scale_step: float = 0.1,
                     max_num_masks: int = 128,
                     shuffle_buffer_size: int = 256,
                     cycle_length: int = 8,
                     deterministic: bool = False,
                     seed: Optional[int] = None,
                     tfds_source: Optional[tfds_source_lib.TfdsSource] = None,
                     skip_batches: int = 0,
                     input_context: Optional[tf.distribute.InputContext] = None,
                     skip_bad_records: bool = False,
                     max_bad_fraction: float = 0.01
                     ) -> tf.data.Dataset:
  """Builds the training or evaluation dataset.

  Args:
    file_pattern: comma-separated globs of TFRecord shards (or `tfds_source`).
    dataset_info: the class table of the examples.
    is_training: augment, shuffle and repeat (True), or one ordered pass (False).
    batch_size: the GLOBAL batch size; divided among replicas via `input_context`.
    crop_size: (height, width) of every element; each `32 * k + 1`.
    min_scale, max_scale, scale_step: random rescaling range (training).
    max_num_masks: ground-truth slots per image (M).
    shuffle_buffer_size: examples in the shuffle buffer (training).
    cycle_length: shards read in parallel.
    deterministic: keep the element order fixed despite parallel reads and maps.
    seed: seed of shuffling and augmentation; with `deterministic` the dataset
      repeats exactly.
    tfds_source: read this TFDS builder's split instead of `file_pattern`.
    skip_batches: training: start after this many (per-replica) batches, as a
      run resumed at step s skips its first s * accumulation batches. The
      skipped records are read but not decoded; with `deterministic` and a
      seed, the batches that follow are those of an uninterrupted run.
    input_context: from `strategy.distribute_datasets_from_function`.
    skip_bad_records: training from TFRecords: skip records that cannot be read
      or decoded (logged, counted in SKIPPED_RECORDS) until more than
      `max_bad_fraction` of the records read are bad. Otherwise, and always in
      evaluation, the first bad record stops the pipeline. Either way the error
      names the shard and record index (`record_errors`).
    max_bad_fraction: see `skip_bad_records`.

  Returns:
    A dataset of dicts keyed by `common` names: IMAGE [B, H, W, 3] float32 in
    [-1, 1], IMAGE_ID, PANOPTIC, the targets of `targets.build_targets`, and for
    evaluation VALID_SIZE and ORIGINAL_SIZE; from TFRecords SKIPPED_RECORDS [B].
  """
  crop_size = tuple(int(s) for s in crop_size)
  check_crop_size(crop_size)
  if not 0 < min_scale <= max_scale:
    raise ValueError(f'Need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if dataset_info is None:
    raise ValueError('panoptic_dataset needs the class table (dataset_info).')
  info = dataset_info
  void_value = info.ignore_label * info.label_divisor
  local_batch = (input_context.get_per_replica_batch_size(batch_size)
                 if input_context else batch_size)
  if (file_pattern is None) == (tfds_source is None):
    raise ValueError('Pass exactly one of file_pattern and tfds_source, got '
                     f'file_pattern={file_pattern!r}, tfds_source={tfds_source}.')
  if tfds_source:
    dataset = tfds_source.examples(is_training, seed, input_context)
    decode = lambda example: tfds_source_lib.decode(example, info)
    if is_training:
      dataset = dataset.repeat()
  else:
    dataset = _tfrecord_examples(file_pattern, is_training, cycle_length, deterministic,
                                 seed, input_context)
    decode = tfrecord_format.decode_example
  if not 0 <= max_bad_fraction < 1:
    raise ValueError('panoptic_dataset.max_bad_fraction must be in [0, 1), got '
                     f'{max_bad_fraction}.')
  if is_training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)

  def prepare(example, example_seed):
    decoded = decode(example)
    if is_training:
      example = _train_example(decoded, example_seed, crop_size, min_scale, max_scale,
                               scale_step, void_value)
    else:
      example = _eval_example(decoded, crop_size, void_value)
    panoptic = example.pop('panoptic')
    features = targets_lib.build_targets(panoptic, info.is_thing, info.label_divisor,
                                         max_num_masks, info.ignore_label)
    features.update({k: v for k, v in example.items() if k != 'image'})
    features[common.IMAGE] = augment.normalize_image(example['image'])
    features[common.PANOPTIC] = panoptic
    features[common.IMAGE_ID] = decoded['image_id']
    features[_LABEL_DIVISOR] = decoded['label_divisor']
    return features

  def check_label_divisor(features):
    # Outside `prepare`: a bad record is skipped or named there, this is the data
    # set's mismatch with the class table.
    features = dict(features)
    with tf.control_dependencies([tf.debugging.assert_equal(
        features.pop(_LABEL_DIVISOR), info.label_divisor,
        message=f'Examples have another label divisor than the class table of '
                f'{info.name!r} ({info.label_divisor}).')]):
      features[common.PANOPTIC] = tf.identity(features[common.PANOPTIC])
    return features

  seeds = tf.data.Dataset.random(seed=seed).batch(2).map(lambda s: tf.cast(s, tf.int32))
  dataset = tf.data.Dataset.zip((dataset, seeds))
  if skip_batches:
    dataset = dataset.skip(skip_batches * local_batch)
  if tfds_source:
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=deterministic or not is_training)
  else:
    dataset = record_errors.map_records(
        dataset, prepare, max_bad_fraction if skip_bad_records and is_training else 0.0,
        deterministic=deterministic or not is_training)
  dataset = dataset.map(check_label_divisor)
  dataset = dataset.batch(local_batch, drop_remainder=is_training)
  return dataset.prefetch(tf.data.AUTOTUNE)
