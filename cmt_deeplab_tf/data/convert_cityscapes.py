r"""Converts Cityscapes panoptic (cityscapesscripts' createPanopticImgs) to TFRecords.

Expects the standard layout under `--cityscapes_root`:
  leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png
  gtFine/cityscapes_panoptic_{split}.json        (made by createPanopticImgs)
  gtFine/cityscapes_panoptic_{split}/*.png

Usage:
  python -m cityscapesscripts.preparation.createPanopticImgs \
      --dataset-folder cityscapes/gtFine --output-folder cityscapes/gtFine
  python -m cmt_deeplab_tf.data.convert_cityscapes --cityscapes_root=cityscapes \
      --split=train --output_dir=tfrecords/cityscapes --num_shards=32

Category ids are Cityscapes label ids (createPanopticImgs' default), mapped to the 19
train ids; with `--use_train_id` the JSON already holds train ids 0..18.
"""
import os

from absl import flags

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.data import panoptic_converter
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import verify

FLAGS = flags.FLAGS


def _image_path(root: str, split: str, image_id: str) -> str:
  city = image_id.split('_')[0]
  return os.path.join(root, 'leftImg8bit', split, city, f'{image_id}_leftImg8bit.png')


def convert_split(root: str, split: str, output_dir: str, num_shards: int,
                  num_workers: int, use_train_id: bool = False, overwrite: bool = False):
  """Converts one split; returns the shard paths."""
  info = dataset_info.get_dataset_info('cityscapes')
  suffix = '_trainId' if use_train_id else ''
  base = os.path.join(root, 'gtFine', f'cityscapes_panoptic_{split}{suffix}')
  data = panoptic_format.load_panoptic_json(base + '.json')
  if use_train_id:  # Re-express train ids as label ids, the table's source ids.
    to_label = dict(enumerate(info.source_ids))
    for category in data['categories']:
      category['id'] = to_label.get(category['id'], category['id'])
    for annotation in data['annotations']:
      for segment in annotation['segments_info']:
        segment['category_id'] = to_label.get(segment['category_id'],
                                              segment['category_id'])
  categories = panoptic_converter.category_to_train_id(data['categories'], info,
                                                       base + '.json')
  sources = panoptic_converter.sources_from_json(
      data, base, lambda image: _image_path(root, split, str(image['id'])))
  return panoptic_converter.convert(sources, categories, info, output_dir, split,
                                    num_shards, num_workers, overwrite)


def main(argv):
  del argv
  paths = convert_split(FLAGS.cityscapes_root, FLAGS.split, FLAGS.output_dir,
                        FLAGS.num_shards, FLAGS.num_workers, FLAGS.use_train_id,
                        FLAGS.overwrite)
  print(f'Wrote {len(paths)} shards to {FLAGS.output_dir}')
  if FLAGS.verify:
    verify.check(','.join(paths), num_workers=FLAGS.num_workers)


def _define_flags():
  flags.DEFINE_string('cityscapes_root', None, 'Root folder of Cityscapes.')
  flags.DEFINE_enum('split', None, ['train', 'val', 'test'], 'Split to convert.')
  flags.DEFINE_bool('use_train_id', False,
                    'The JSON came from createPanopticImgs --use-train-id.')
  flags.DEFINE_string('output_dir', None, 'Where to write the shards.')
  flags.DEFINE_integer('num_shards', 32, 'Number of shards.')
  flags.DEFINE_integer('num_workers', 2, 'Parallel writer processes.')
  flags.DEFINE_bool('overwrite', False, 'Replace existing shards of this split.')
  flags.DEFINE_bool('verify', False, 'Then read back and check every record written '
                    '(`cmt_deeplab_tf.data.verify`); exit status 1 if one is bad.')


def run():
  _define_flags()
  for name in ('cityscapes_root', 'split', 'output_dir'):
    flags.mark_flag_as_required(name)
  cli.run_main(main)


if __name__ == '__main__':
  run()
