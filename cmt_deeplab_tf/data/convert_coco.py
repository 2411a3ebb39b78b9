r"""Converts any data set in the COCO panoptic format to sharded TFRecords.

Usage (COCO 2017; paths as in the official download):
  python -m cmt_deeplab_tf.data.convert_coco --dataset=coco --split=train \
      --image_dir=coco/train2017 \
      --panoptic_json=coco/annotations/panoptic_train2017.json \
      --panoptic_dir=coco/annotations/panoptic_train2017 \
      --output_dir=tfrecords/coco --num_shards=256 --num_workers=8

The 133 COCO categories map to train ids 0..132 in increasing category id (80
things, then 53 stuff); unlabeled pixels become void. See WORKSPACE_NOTES.md.

`--dataset` names a built-in class table (coco, synthetic) or, for any other
name, a new data set whose table comes from the JSON's `categories` (any ids,
train ids in increasing id, things and stuff by `isthing`); its label divisor is
the smallest power of two >= 256 above the most instances of one thing class in
one image, or `--label_divisor`. The table is written beside the shards as
`class_table.json`, where training, evaluation, export and predict find it:

  python -m cmt_deeplab_tf.data.convert_coco --dataset=my_data --split=train \
      --image_dir=my_data/images --panoptic_json=my_data/panoptic_train.json \
      --output_dir=tfrecords/my_data
"""
import dataclasses
import os
from typing import Dict

from absl import flags

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_converter
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import verify

FLAGS = flags.FLAGS


def convert_split(dataset: str, split: str, image_dir: str, panoptic_json: str,
                  panoptic_dir: str, output_dir: str, num_shards: int, num_workers: int,
                  overwrite: bool = False, label_divisor: int = 0):
  """Converts one split; returns the shard paths."""
  data = panoptic_format.load_panoptic_json(panoptic_json)
  info = class_table_of(dataset, data, panoptic_json, label_divisor)
  categories = panoptic_converter.category_to_train_id(data['categories'], info,
                                                       panoptic_json)
  panoptic_dir = panoptic_dir or os.path.splitext(panoptic_json)[0]
  sources = panoptic_converter.sources_from_json(
      data, panoptic_dir, lambda image: os.path.join(image_dir, image['file_name']))
  return panoptic_converter.convert(sources, categories, info, output_dir, split,
                                    num_shards, num_workers, overwrite)


def class_table_of(dataset: str, data: Dict, panoptic_json: str,
                   label_divisor: int = 0) -> dataset_info.DatasetInfo:
  """The built-in table `dataset`, or a new one from the JSON's `categories`.

  Args:
    dataset: a built-in name, or the name of a new data set.
    data: the loaded panoptic JSON.
    panoptic_json: its path, for error messages.
    label_divisor: for a new data set; 0 picks the smallest power of two >= 256
      above the most instances of one thing class in one image.
  """
  if dataset in dataset_info.BUILT_IN:
    if label_divisor:
      raise ValueError(f'--label_divisor is fixed for the built-in --dataset={dataset}; '
                       'it applies to new data sets only.')
    return dataset_info.get_dataset_info(dataset)
  info = dataset_info.from_categories(dataset, data['categories'],
                                      label_divisor or 256, panoptic_json)
  most = panoptic_converter.max_thing_instances(data, info)
  if not label_divisor:
    return dataclasses.replace(info, label_divisor=dataset_info.label_divisor_for(most))
  if most >= label_divisor:
    raise ValueError(f'--label_divisor={label_divisor} is too small: {panoptic_json} has '
                     f'{most} instances of one class in one image.')
  return info


def main(argv):
  del argv
  paths = convert_split(FLAGS.dataset, FLAGS.split, FLAGS.image_dir, FLAGS.panoptic_json,
                        FLAGS.panoptic_dir, FLAGS.output_dir, FLAGS.num_shards,
                        FLAGS.num_workers, FLAGS.overwrite, FLAGS.label_divisor)
  print(f'Wrote {len(paths)} shards to {FLAGS.output_dir}')
  if FLAGS.verify:
    verify.check(','.join(paths), num_workers=FLAGS.num_workers)


def _define_flags():
  flags.DEFINE_string('dataset', 'coco',
                      'A built-in class table (coco, synthetic), or the name of a new data '
                      'set whose class table comes from the JSON\'s categories.')
  flags.DEFINE_integer('label_divisor', 0,
                       'New data sets only: panoptic id = class * divisor + instance; '
                       '0 fits the largest instance count of the JSON.')
  flags.DEFINE_string('split', None, 'Split name used for the shard names, e.g. train.')
  flags.DEFINE_string('image_dir', None, 'Folder of the images.')
  flags.DEFINE_string('panoptic_json', None, 'The panoptic JSON file.')
  flags.DEFINE_string('panoptic_dir', None,
                      'Folder of the panoptic PNGs; defaults to the JSON path without .json.')
  flags.DEFINE_string('output_dir', None, 'Where to write the shards.')
  flags.DEFINE_integer('num_shards', 8, 'Number of shards.')
  flags.DEFINE_integer('num_workers', 2, 'Parallel writer processes.')
  flags.DEFINE_bool('overwrite', False, 'Replace existing shards of this split.')
  flags.DEFINE_bool('verify', False, 'Then read back and check every record written '
                    '(`cmt_deeplab_tf.data.verify`); exit status 1 if one is bad.')


def run():
  _define_flags()
  for name in ('split', 'image_dir', 'panoptic_json', 'output_dir'):
    flags.mark_flag_as_required(name)
  cli.run_main(main)


if __name__ == '__main__':
  run()
