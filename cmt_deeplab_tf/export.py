r"""Exports a training run as a SavedModel that serves uint8 images of any size.

  python -m cmt_deeplab_tf.export --model_dir=runs/cmt_s --export_dir=exported/cmt_s \
      [--checkpoint=runs/cmt_s/ckpt-50000]

The model and post-processing come from `<model_dir>/operative_config.gin`, the
weights from the latest (or the given) checkpoint. The SavedModel loads with plain
TensorFlow, without this package:

  serve = tf.saved_model.load(export_dir).signatures['serving_default']
  outputs = serve(images=uint8_batch)   # [B, H, W, 3]
  outputs['panoptic'], outputs['semantic'], outputs['instance']   # int32 [B, H, W]
  outputs['segment_panoptic_ids'], outputs['segment_classes']     # int32 [B, N]
  outputs['segment_scores']                                       # float32 [B, N]

See `cmt_deeplab_tf.serving.export_lib` for the exact contract.
"""
from absl import flags
from absl import logging

from cmt_deeplab_tf import cli
from cmt_deeplab_tf.serving import export_lib


def _define_flags():
  flags.DEFINE_string('model_dir', None, 'Model dir of a training run.')
  flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel.')
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint prefix to export; default: the latest in --model_dir.')


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  export_lib.export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.checkpoint)
  logging.info('Exported %s to %s (signature %r).', FLAGS.model_dir, FLAGS.export_dir,
               export_lib.SIGNATURE_NAME)


def run():
  _define_flags()
  flags.mark_flags_as_required(['model_dir', 'export_dir'])
  cli.run_main(main)


if __name__ == '__main__':
  run()
