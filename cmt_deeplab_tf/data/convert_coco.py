r"""Converts COCO panoptic (or the synthetic set, same format) to sharded TFRecords.

Usage (COCO 2017; paths as in the official download):
  python -m cmt_deeplab_tf.data.convert_coco --dataset=coco --split=train \
      --image_dir=coco/train2017 \
      --panoptic_json=coco/annotations/panoptic_train2017.json \
      --panoptic_dir=coco/annotations/panoptic_train2017 \
      --output_dir=tfrecords/coco --num_shards=256 --num_workers=8

The 133 COCO categories map to train ids 0..132 in increasing category id (80
things, then 53 stuff); unlabeled pixels become void. See WORKSPACE_NOTES.md.
"""
import os

from absl import app
from absl import flags

from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_converter
from cmt_deeplab_tf.data import panoptic_format

FLAGS = flags.FLAGS


def convert_split(dataset: str, split: str, image_dir: str, panoptic_json: str,
                  panoptic_dir: str, output_dir: str, num_shards: int, num_workers: int,
                  overwrite: bool = False):
  """Converts one split; returns the shard paths."""
  info = dataset_info.get_dataset_info(dataset)
  data = panoptic_format.load_panoptic_json(panoptic_json)
  categories = panoptic_converter.category_to_train_id(data['categories'], info,
                                                       panoptic_json)
  panoptic_dir = panoptic_dir or os.path.splitext(panoptic_json)[0]
  sources = panoptic_converter.sources_from_json(
      data, panoptic_dir, lambda image: os.path.join(image_dir, image['file_name']))
  return panoptic_converter.convert(sources, categories, dataset, output_dir, split,
                                    num_shards, num_workers, overwrite)


def main(argv):
  del argv
  paths = convert_split(FLAGS.dataset, FLAGS.split, FLAGS.image_dir, FLAGS.panoptic_json,
                        FLAGS.panoptic_dir, FLAGS.output_dir, FLAGS.num_shards,
                        FLAGS.num_workers, FLAGS.overwrite)
  print(f'Wrote {len(paths)} shards to {FLAGS.output_dir}')


def _define_flags():
  flags.DEFINE_enum('dataset', 'coco', ['coco', 'synthetic'], 'Class table to map to.')
  flags.DEFINE_string('split', None, 'Split name used for the shard names, e.g. train.')
  flags.DEFINE_string('image_dir', None, 'Folder of the images.')
  flags.DEFINE_string('panoptic_json', None, 'The panoptic JSON file.')
  flags.DEFINE_string('panoptic_dir', None,
                      'Folder of the panoptic PNGs; defaults to the JSON path without .json.')
  flags.DEFINE_string('output_dir', None, 'Where to write the shards.')
  flags.DEFINE_integer('num_shards', 8, 'Number of shards.')
  flags.DEFINE_integer('num_workers', 2, 'Parallel writer processes.')
  flags.DEFINE_bool('overwrite', False, 'Replace existing shards of this split.')


def run():
  _define_flags()
  for name in ('split', 'image_dir', 'panoptic_json', 'output_dir'):
    flags.mark_flag_as_required(name)
  app.run(main)


if __name__ == '__main__':
  run()
