"""Round trip synthetic -> converter -> tf.data pipeline, against the source files."""
import dataclasses
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import tfrecord_format

CROP = (129, 129)
MAX_MASKS = 16
SYNTHETIC = dataset_info.get_dataset_info('synthetic')


def _eval_dataset(tfrecord_dir, **kwargs):
  return pipeline.panoptic_dataset(
      os.path.join(tfrecord_dir, 'val-*'), SYNTHETIC, is_training=False, batch_size=1,
      crop_size=CROP, max_num_masks=MAX_MASKS, **kwargs)


def _train_dataset(pattern, seed, **kwargs):
  return pipeline.panoptic_dataset(
      pattern, SYNTHETIC, is_training=True, batch_size=2, crop_size=CROP,
      max_num_masks=MAX_MASKS, seed=seed, deterministic=True, **kwargs)


def _source_annotations(synthetic_dir):
  with open(os.path.join(synthetic_dir, 'annotations', 'panoptic_val.json')) as f:
    data = json.load(f)
  return {str(a['image_id']): a for a in data['annotations']}


def test_eval_round_trip_reproduces_every_mask_and_class(synthetic_dir, tfrecord_dir):
  info = dataset_info.get_dataset_info('synthetic')
  train_id = {cid: i for i, cid in enumerate(info.source_ids)}
  annotations = _source_annotations(synthetic_dir)
  seen = 0
  for batch in _eval_dataset(tfrecord_dir):
    annotation = annotations[batch[common.IMAGE_ID][0].numpy().decode()]
    ids = panoptic_format.read_segment_ids(os.path.join(
        synthetic_dir, 'annotations', 'panoptic_val', annotation['file_name']))
    height, width = ids.shape
    np.testing.assert_array_equal(batch[common.VALID_SIZE][0], [height, width])
    mask_index = batch[common.MASK_INDEX][0].numpy()
    weight = batch[common.PIXEL_WEIGHT][0].numpy()
    classes = batch[common.GT_CLASSES][0].numpy()
    assert (mask_index[height:] == -1).all() and (mask_index[:, width:] == -1).all()
    mask_index, weight = mask_index[:height, :width], weight[:height, :width]
    ignored = ids == 0
    matched_slots = set()
    for segment in annotation['segments_info']:
      mask = ids == segment['id']
      if segment['iscrowd']:
        ignored |= mask
        continue
      slot = mask_index[mask][0]
      np.testing.assert_array_equal(mask_index == slot, mask)
      assert classes[slot] == train_id[segment['category_id']]
      matched_slots.add(slot)
    np.testing.assert_array_equal(weight == 0, ignored)
    assert batch[common.GT_VALID][0].numpy().sum() == len(matched_slots)
    image_file = os.path.join(synthetic_dir, 'val', f'{int(annotation["image_id"]):012d}.jpg')
    expected = np.asarray(Image.open(image_file), np.float32) / 127.5 - 1.0
    # TF's and PIL's JPEG decoders round differently by a few levels.
    difference = np.abs(batch[common.IMAGE][0, :height, :width].numpy() - expected) * 127.5
    assert difference.mean() < 1.5 and difference.max() < 24
    seen += 1
  assert seen == len(annotations)


def test_void_and_crowd_are_ignored_and_semantic_is_void_only_on_void(tfrecord_dir):
  info = dataset_info.get_dataset_info('synthetic')
  for batch in _eval_dataset(tfrecord_dir):
    panoptic = batch[common.PANOPTIC][0].numpy()
    semantic, instance = panoptic // info.label_divisor, panoptic % info.label_divisor
    void = semantic == 255
    crowd = ~void & np.isin(semantic, info.thing_ids) & (instance == 0)
    np.testing.assert_array_equal(batch[common.PIXEL_WEIGHT][0].numpy() == 0, void | crowd)
    np.testing.assert_array_equal(batch[common.SEMANTIC][0].numpy() == 255, void)


# Train ids of the colour-coded examples: disc (thing 0), square (thing 1), sky (stuff 4).
_CLASS_COLORS = {0: (250, 0, 0), 1: (0, 250, 0), 4: (0, 0, 250)}


def _write_color_coded_records(path, num_examples):
  """Examples whose image colour encodes the label: one flat colour per class."""
  with tf.io.TFRecordWriter(path) as writer:
    for index in range(num_examples):
      label = np.full((100, 140), 4 * 256, np.int64)            # sky
      label[20:70, 30:90] = 0 * 256 + 1                          # disc, instance 1
      label[50:95, 80:130] = 1 * 256 + 1                         # square, instance 1
      image = np.zeros(label.shape + (3,), np.uint8)
      for class_id, color in _CLASS_COLORS.items():
        image[label // 256 == class_id] = color
      example = tfrecord_format.make_example(
          panoptic_format.encode_png(image), 'png', f'{index}.png', str(index), label, 256)
      writer.write(example.SerializeToString())


def test_augmented_image_and_label_stay_aligned(tmp_path):
  path = str(tmp_path / 'colors.tfrecord')
  _write_color_coded_records(path, 4)
  dataset = _train_dataset(path, seed=7, min_scale=0.5, max_scale=2.0, scale_step=0.25)
  flipped_seen = set()
  for batch in dataset.take(6):
    for image, mask_index, classes, valid in zip(
        batch[common.IMAGE].numpy(), batch[common.MASK_INDEX].numpy(),
        batch[common.GT_CLASSES].numpy(), batch[common.GT_VALID].numpy()):
      rgb = (image + 1.0) * 127.5
      slot_of_class = {c: k for k, c in enumerate(classes) if valid[k]}
      for class_id, slot in slot_of_class.items():
        interior = ndimage.binary_erosion(mask_index == slot, iterations=2)
        if interior.any():
          np.testing.assert_allclose(
              rgb[interior], np.broadcast_to(_CLASS_COLORS[class_id], rgb[interior].shape),
              atol=2.0)
      if 0 in slot_of_class and 1 in slot_of_class:  # Disc left of square unless flipped.
        disc = np.nonzero((mask_index == slot_of_class[0]).any(axis=0))[0]
        square = np.nonzero((mask_index == slot_of_class[1]).any(axis=0))[0]
        flipped_seen.add(bool(disc.mean() > square.mean()))
  assert flipped_seen == {True, False}, 'expected both flipped and unflipped crops'


def test_shapes_are_static(tfrecord_dir):
  for is_training in (True, False):
    dataset = pipeline.panoptic_dataset(
        os.path.join(tfrecord_dir, 'train-*'), SYNTHETIC, is_training=is_training,
        batch_size=2, crop_size=CROP, max_num_masks=MAX_MASKS)
    for key, spec in dataset.element_spec.items():
      if is_training or key != common.IMAGE_ID:
        assert spec.shape[1:].is_fully_defined(), (key, spec.shape)
    if is_training:
      assert dataset.element_spec[common.IMAGE].shape == (2,) + CROP + (3,)
      assert dataset.element_spec[common.GT_CLASSES].shape == (2, MAX_MASKS)


def test_seed_makes_training_deterministic(tfrecord_dir):
  pattern = os.path.join(tfrecord_dir, 'train-*')

  def first_batches(seed):
    return [b for b in _train_dataset(pattern, seed).take(3)]

  a, b, c = first_batches(11), first_batches(11), first_batches(12)
  for x, y in zip(a, b):
    for key in (common.IMAGE, common.MASK_INDEX, common.IMAGE_ID):
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x[common.IMAGE], z[common.IMAGE]) for x, z in zip(a, c))


def test_input_context_shards_files_and_splits_the_batch(tfrecord_dir):
  context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                       num_replicas_in_sync=2)
  dataset = pipeline.panoptic_dataset(
      os.path.join(tfrecord_dir, 'val-*'), SYNTHETIC, is_training=False, batch_size=4,
      crop_size=CROP, max_num_masks=MAX_MASKS, input_context=context)
  ids = [i.decode() for b in dataset for i in b[common.IMAGE_ID].numpy()]
  shard = sorted(glob.glob(os.path.join(tfrecord_dir, 'val-*')))[1]
  expected = [tfrecord_format.decode_example(r)['image_id'].numpy().decode()
              for r in tf.data.TFRecordDataset(shard)]
  assert ids == expected
  assert max(len(b[common.IMAGE_ID]) for b in dataset) == 2


def test_file_pattern_matching_nothing_is_named(tmp_path):
  with pytest.raises(ValueError, match='nothing-here.*matches no file'):
    pipeline.panoptic_dataset(str(tmp_path / 'nothing-here*'), SYNTHETIC)


@pytest.mark.parametrize('crop', [(128, 129), (641, 640), (100, 100)])
def test_crop_size_violating_the_stride_is_named(tfrecord_dir, crop):
  with pytest.raises(ValueError, match=r'crop_size.*32 \* k \+ 1'):
    pipeline.panoptic_dataset(os.path.join(tfrecord_dir, 'train-*'), SYNTHETIC,
                              crop_size=crop)


def test_eval_shrinks_images_larger_than_the_crop(tmp_path):
  path = str(tmp_path / 'big.tfrecord')
  label = np.full((200, 300), 4 * 256, np.int64)
  image = np.full((200, 300, 3), 90, np.uint8)
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(tfrecord_format.make_example(
        panoptic_format.encode_png(image), 'png', 'x.png', 'x', label, 256
    ).SerializeToString())
  batch = next(iter(pipeline.panoptic_dataset(path, SYNTHETIC, is_training=False,
                                              crop_size=(129, 129), batch_size=1)))
  np.testing.assert_array_equal(batch[common.ORIGINAL_SIZE][0], [200, 300])
  np.testing.assert_array_equal(batch[common.VALID_SIZE][0], [86, 129])
  assert (batch[common.SEMANTIC][0, :86].numpy() == 4).all()
  assert (batch[common.SEMANTIC][0, 86:].numpy() == 255).all()


def test_a_class_table_with_another_label_divisor_is_refused(tfrecord_dir):
  other = dataclasses.replace(SYNTHETIC, label_divisor=512)
  dataset = pipeline.panoptic_dataset(os.path.join(tfrecord_dir, 'val-*'), other,
                                      is_training=False, crop_size=CROP, batch_size=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match='another label divisor'):
    next(iter(dataset))


def test_skipped_batches_resume_the_seeded_order(tfrecord_dir):
  pattern = os.path.join(tfrecord_dir, 'train-*')
  # 7 batches of 2 cross the 10-example epoch: the reshuffled second epoch is covered.
  full = list(_train_dataset(pattern, seed=5).take(7).as_numpy_iterator())
  resumed = list(_train_dataset(pattern, seed=5, skip_batches=4).take(3).as_numpy_iterator())
  for expected, actual in zip(full[4:], resumed):
    assert list(actual[common.IMAGE_ID]) == list(expected[common.IMAGE_ID])
    np.testing.assert_array_equal(actual[common.IMAGE], expected[common.IMAGE])
    np.testing.assert_array_equal(actual[common.PANOPTIC], expected[common.PANOPTIC])
