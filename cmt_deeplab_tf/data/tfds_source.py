"""Panoptic examples from a TensorFlow Datasets builder in a local `data_dir`.

Reads `coco/2017_panoptic`, or any TFDS builder with its features:

  image                 JPEG/PNG image, read undecoded and decoded by
                        `tfrecord_format.decode_image` (the pixels PIL gives);
  image/id              int64 image id;
  panoptic_image        RGB PNG of segment ids, `R + 256 G + 256^2 B`, 0 = void;
  panoptic_objects      sequence of {id, label, is_crowd} (ClassLabel `label`
                        indexes the class table's train ids),

into the decoded form of `tfrecord_format.decode_example` (train-id panoptic
labels with the converters' instance numbering), so the same augmentation and
target builder (`pipeline`, `targets`) follow. Selected in gin:

  ExperimentConfig.tfds_source = @TfdsSource()
  TfdsSource.name = 'coco/2017_panoptic'
  TfdsSource.data_dir = '/data/tensorflow_datasets'

The data must already be prepared in `data_dir` (`tfds build` or
`download_and_prepare` elsewhere): this module only reads, it never downloads.
"""
import dataclasses
from typing import Dict, Optional

import gin
import tensorflow as tf
import tensorflow_datasets as tfds

from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import tfrecord_format

OBJECTS = 'panoptic_objects'


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A prepared TFDS panoptic data set.

  Attributes:
    name: TFDS name with config, e.g. 'coco/2017_panoptic'.
    data_dir: the local TFDS data folder holding it.
    train_split, eval_split: TFDS split names.
    class_table: a built-in data set name, or the path of a class_table.json
      whose train ids are the builder's ClassLabel indices.
  """
  name: str = 'coco/2017_panoptic'
  data_dir: Optional[str] = None
  train_split: str = 'train'
  eval_split: str = 'validation'
  class_table: str = 'coco'

  def dataset_info(self) -> dataset_info_lib.DatasetInfo:
    """The class table, checked against the builder's ClassLabel."""
    if self.class_table in dataset_info_lib.BUILT_IN:
      info = dataset_info_lib.get_dataset_info(self.class_table)
    else:
      info = class_table.read_class_table(self.class_table)
    labels = self._builder().info.features[OBJECTS]['label']
    if labels.num_classes != info.num_classes:
      raise ValueError(f'TfdsSource.name={self.name!r} has {labels.num_classes} labels but '
                       f'TfdsSource.class_table={self.class_table!r} has '
                       f'{info.num_classes} classes.')
    named = [n for n in labels.names if not n.isdigit()]
    if named and list(labels.names) != list(info.class_names):
      differ = [(i, a, b) for i, (a, b) in enumerate(zip(labels.names, info.class_names))
                if a != b]
      raise ValueError(f'TfdsSource.name={self.name!r} names its labels differently from '
                       f'TfdsSource.class_table={self.class_table!r} (index, TFDS, table): '
                       f'{differ[:5]}.')
    return info

  def _builder(self) -> tfds.core.DatasetBuilder:
    if not self.data_dir:
      raise ValueError('TfdsSource.data_dir is not set: the local folder of prepared '
                       'TFDS data (this project never downloads).')
    return tfds.builder(self.name, data_dir=self.data_dir)

  def examples(self, is_training: bool, seed: Optional[int] = None,
               input_context: Optional[tf.distribute.InputContext] = None
               ) -> tf.data.Dataset:
    """The split's raw examples, this input pipeline's share (files interleaved)."""
    split = self.train_split if is_training else self.eval_split
    read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed)
    try:
      return self._builder().as_dataset(
          split=split, shuffle_files=is_training, read_config=read_config,
          decoders={'image': tfds.decode.SkipDecoding(),
                    'panoptic_image': tfds.decode.SkipDecoding()})
    except AssertionError as e:  # TFDS's "could not find data in ..." error.
      raise ValueError(f'TfdsSource {self.name!r} split {split!r} is not prepared in '
                       f'TfdsSource.data_dir={self.data_dir}: {e}') from e


def decode(example: Dict[str, tf.Tensor],
           info: dataset_info_lib.DatasetInfo) -> Dict[str, tf.Tensor]:
  """A TFDS example -> 'image' uint8 [H, W, 3], 'panoptic' int32 [H, W], 'image_id'."""
  objects = example[OBJECTS]
  panoptic = panoptic_from_segments(
      tfrecord_format.decode_panoptic_png(example['panoptic_image']),
      tf.cast(objects['id'], tf.int32), tf.cast(objects['label'], tf.int32),
      tf.cast(objects['is_crowd'], tf.bool), info)
  return {'image': tfrecord_format.decode_image(example['image']),
          'panoptic': panoptic,
          'image_id': tf.strings.as_string(example['image/id']),
          'label_divisor': tf.constant(info.label_divisor, tf.int32)}


def panoptic_from_segments(segment_ids: tf.Tensor, ids: tf.Tensor, labels: tf.Tensor,
                           is_crowd: tf.Tensor,
                           info: dataset_info_lib.DatasetInfo) -> tf.Tensor:
  """Segment-id map -> panoptic label in train ids, numbered as the converters do.

  Thing segments get instances 1, 2, ... per class in list order; crowd and stuff
  segments instance 0; void pixels, and pixels of ids absent from the list,
  `ignore_label * label_divisor` (as `panoptic_converter.panoptic_label`).

  Args:
    segment_ids: int32 [H, W], 0 = void.
    ids: int32 [K], the segments' ids.
    labels: int32 [K], their train ids.
    is_crowd: bool [K].
    info: the class table.

  Returns:
    int32 [H, W].
  """
  void = info.ignore_label * info.label_divisor
  counted = tf.logical_and(tf.gather(tf.constant(info.is_thing), labels),
                           tf.logical_not(is_crowd))
  one_hot = tf.one_hot(labels, info.num_classes, dtype=tf.int32) * tf.cast(
      counted, tf.int32)[:, None]
  instance = tf.reduce_sum(tf.cumsum(one_hot, axis=0) * one_hot, axis=1)
  values = labels * info.label_divisor + instance
  # A sentinel (id -1) keeps the lookup valid for an empty list.
  keys = tf.concat([[-1], ids], 0)
  values = tf.concat([[void], values], 0)
  order = tf.argsort(keys)
  keys, values = tf.gather(keys, order), tf.gather(values, order)
  flat = tf.reshape(segment_ids, [-1])
  position = tf.minimum(tf.searchsorted(keys, flat), tf.size(keys) - 1)
  found = tf.logical_and(tf.equal(tf.gather(keys, position), flat),
                         flat != 0)
  return tf.reshape(tf.where(found, tf.gather(values, position), void),
                    tf.shape(segment_ids))
