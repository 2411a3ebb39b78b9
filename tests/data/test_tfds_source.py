"""TFDS input (`coco/2017_panoptic` features) through the same pipeline, via mock_data.

`tfds.testing.mock_data` stands in for a prepared `data_dir`: its `as_dataset`
serves examples made from the synthetic set's files, in the form TFDS gives with
`SkipDecoding` (encoded image bytes). The labels must equal the converters' numpy
implementation (`panoptic_converter.panoptic_label`) and the pixels PIL's.
"""
import json
import os

import gin
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import augment
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_converter
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import pipeline
from cmt_deeplab_tf.data import tfds_source

COCO = dataset_info.get_dataset_info('coco')
# Synthetic category -> a COCO category of the same kind (things 1-4, stuff 5-8).
TO_COCO = {1: 1, 2: 3, 3: 18, 4: 44, 5: 187, 6: 193, 7: 178, 8: 154}


def _annotations(synthetic_dir):
  with open(os.path.join(synthetic_dir, 'annotations', 'panoptic_val.json')) as f:
    data = json.load(f)
  for annotation in data['annotations']:
    for segment in annotation['segments_info']:
      segment['category_id'] = TO_COCO[segment['category_id']]
  return data['annotations']


def _as_dataset_fn(synthetic_dir):
  train_id = {cid: i for i, cid in enumerate(COCO.source_ids)}
  annotations = _annotations(synthetic_dir)

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False,
                 **kwargs):
    del self, read_config, shuffle_files, kwargs
    assert split == 'validation'
    # The pipeline must ask for the encoded bytes, to decode them its own way.
    assert isinstance(decoders['image'], tfds.decode.SkipDecoding)
    examples = []
    for a in annotations:
      name = f"{a['image_id']:012d}"
      with open(os.path.join(synthetic_dir, 'val', name + '.jpg'), 'rb') as f:
        image = f.read()
      with open(os.path.join(synthetic_dir, 'annotations', 'panoptic_val',
                             name + '.png'), 'rb') as f:
        png = f.read()
      segments = a['segments_info']
      examples.append({
          'image': image, 'image/id': np.int64(a['image_id']), 'panoptic_image': png,
          'panoptic_objects': {
              'id': np.array([s['id'] for s in segments], np.int64),
              'label': np.array([train_id[s['category_id']] for s in segments], np.int64),
              'is_crowd': np.array([bool(s['iscrowd']) for s in segments])}})
    signature = {'image': tf.TensorSpec([], tf.string),
                 'image/id': tf.TensorSpec([], tf.int64),
                 'panoptic_image': tf.TensorSpec([], tf.string),
                 'panoptic_objects': {'id': tf.TensorSpec([None], tf.int64),
                                      'label': tf.TensorSpec([None], tf.int64),
                                      'is_crowd': tf.TensorSpec([None], tf.bool)}}
    return tf.data.Dataset.from_generator(lambda: iter(examples),
                                          output_signature=signature)
  return as_dataset, annotations


def test_tfds_examples_match_the_converter_and_pil(synthetic_dir, tmp_path):
  as_dataset, annotations = _as_dataset_fn(synthetic_dir)
  categories = {cid: i for i, cid in enumerate(COCO.source_ids)}
  source = tfds_source.TfdsSource(data_dir=str(tmp_path), class_table='coco')
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    assert source.dataset_info() == COCO
    dataset = pipeline.panoptic_dataset(
        dataset_info=COCO, tfds_source=source, is_training=False, batch_size=1,
        crop_size=(129, 129), max_num_masks=16)
    batches = list(dataset)
  assert len(batches) == len(annotations)
  crowd = 0
  for batch, annotation in zip(batches, annotations):
    name = f"{annotation['image_id']:012d}"
    png_path = os.path.join(synthetic_dir, 'annotations', 'panoptic_val', name + '.png')
    expected = panoptic_converter.panoptic_label(
        panoptic_format.read_segment_ids(png_path), annotation['segments_info'],
        categories, COCO, png_path)
    height, width = expected.shape
    np.testing.assert_array_equal(batch[common.PANOPTIC][0, :height, :width], expected)
    pixels = np.asarray(Image.open(os.path.join(synthetic_dir, 'val', name + '.jpg')))
    np.testing.assert_array_equal(batch[common.IMAGE][0, :height, :width],
                                  augment.normalize_image(pixels).numpy())
    assert batch[common.IMAGE_ID][0].numpy().decode() == str(annotation['image_id'])
    crowd += sum(s['iscrowd'] for s in annotation['segments_info'])
  assert crowd > 0  # Crowd segments were exercised (instance 0 of a thing).


def test_tfds_source_errors_name_the_setting(tmp_path):
  with pytest.raises(ValueError, match='TfdsSource.data_dir is not set'):
    tfds_source.TfdsSource().examples(is_training=False)
  # Nothing prepared there: an error, never a download.
  with pytest.raises(ValueError, match=f'not prepared in TfdsSource.data_dir={tmp_path}'):
    tfds_source.TfdsSource(data_dir=str(tmp_path)).examples(is_training=False)
  with tfds.testing.mock_data(num_examples=1):
    with pytest.raises(ValueError, match='has 133 labels but TfdsSource.class_table='
                                         "'synthetic' has 8 classes"):
      tfds_source.TfdsSource(data_dir=str(tmp_path), class_table='synthetic').dataset_info()


def test_tfds_source_is_selected_in_gin(synthetic_dir, tmp_path):
  from cmt_deeplab_tf.training import experiment  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin.parse_config(f"""
        ExperimentConfig.tfds_source = @TfdsSource()
        TfdsSource.name = 'coco/2017_panoptic'
        TfdsSource.data_dir = '{tmp_path}'
    """)
    config = experiment.ExperimentConfig()
    assert config.tfds_source == tfds_source.TfdsSource(data_dir=str(tmp_path))
    as_dataset, _ = _as_dataset_fn(synthetic_dir)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
      assert experiment.experiment_dataset_info(config) == COCO
    with pytest.raises(ValueError, match='tfds_source and the file patterns are both set'):
      experiment.experiment_dataset_info(experiment.ExperimentConfig(eval_file_pattern='x'))
  finally:
    gin.clear_config()
