"""The TFRecord format of panoptic examples: one `tf.train.Example` per image.

Fields (all written by the converters, read by `decode_example`):
  image/encoded                 bytes   the original encoded image (JPEG or PNG).
  image/format                  bytes   'jpeg' or 'png'.
  image/filename                bytes   file name of the image.
  image/id                      bytes   the data set's image id, as text.
  image/height, image/width     int64   image size.
  image/panoptic/encoded        bytes   RGB PNG of the panoptic label in TRAIN ids:
                                        value = R + 256 G + 256^2 B
                                              = train_id * label_divisor + instance,
                                        void = 255 * label_divisor; a thing pixel with
                                        instance 0 is crowd.
  image/panoptic/label_divisor  int64   the label divisor used above.

Storing the label as an RGB PNG (not raw int32 as DeepLab2 does) keeps COCO's 118k
training labels at a few KB each while decoding with a single `tf.io.decode_png`.
"""
from typing import Dict

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf.data import panoptic_format

IMAGE_ENCODED = 'image/encoded'
IMAGE_FORMAT = 'image/format'
IMAGE_FILENAME = 'image/filename'
IMAGE_ID = 'image/id'
IMAGE_HEIGHT = 'image/height'
IMAGE_WIDTH = 'image/width'
PANOPTIC_ENCODED = 'image/panoptic/encoded'
LABEL_DIVISOR = 'image/panoptic/label_divisor'


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def make_example(image_bytes: bytes, image_format: str, filename: str, image_id: str,
                 panoptic_label: np.ndarray, label_divisor: int) -> tf.train.Example:
  """Builds a `tf.train.Example` from an encoded image and a panoptic label [H, W]."""
  height, width = panoptic_label.shape
  label_png = panoptic_format.encode_png(panoptic_format.id_to_rgb(panoptic_label))
  return tf.train.Example(features=tf.train.Features(feature={
      IMAGE_ENCODED: _bytes(image_bytes),
      IMAGE_FORMAT: _bytes(image_format.encode()),
      IMAGE_FILENAME: _bytes(filename.encode()),
      IMAGE_ID: _bytes(str(image_id).encode()),
      IMAGE_HEIGHT: _int64(height),
      IMAGE_WIDTH: _int64(width),
      PANOPTIC_ENCODED: _bytes(label_png),
      LABEL_DIVISOR: _int64(label_divisor),
  }))


_FEATURES = {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value='jpeg'),
    IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=''),
    IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
    IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
    PANOPTIC_ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL_DIVISOR: tf.io.FixedLenFeature([], tf.int64),
}


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes a JPEG or PNG (string []) into uint8 [H, W, 3], exactly as PIL does.

  JPEGs use the accurate integer IDCT, libjpeg's default and PIL's: TensorFlow's
  default fast IDCT changes pixel values by a few levels (on the demo's 24
  validation images, 818,378 values, enough to move PQ by 0.5 between
  `train --mode=eval` and `predict`, which reads images with PIL). Training,
  evaluation and prediction thus see the same pixels for the same file.
  """
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def decode_panoptic_png(encoded: tf.Tensor) -> tf.Tensor:
  """RGB panoptic PNG (string []) -> int32 [H, W] ids, `R + 256 G + 256^2 B`."""
  rgb = tf.cast(tf.io.decode_png(encoded, channels=3), tf.int32)
  return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def decode_example(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
  """Parses a serialized example.

  Returns:
    A dict with 'image' uint8 [H, W, 3], 'panoptic' int32 [H, W] (train ids),
    'image_id' string [], 'label_divisor' int32 [].
  """
  parsed = tf.io.parse_single_example(serialized, _FEATURES)
  image = decode_image(parsed[IMAGE_ENCODED])
  panoptic = decode_panoptic_png(parsed[PANOPTIC_ENCODED])
  height = tf.cast(parsed[IMAGE_HEIGHT], tf.int32)
  width = tf.cast(parsed[IMAGE_WIDTH], tf.int32)
  image = tf.ensure_shape(image, [None, None, 3])
  tf.debugging.assert_equal(
      tf.shape(image)[:2], tf.shape(panoptic),
      message='Image and panoptic label of an example differ in size.')
  return {
      'image': tf.reshape(image, [height, width, 3]),
      'panoptic': tf.reshape(panoptic, [height, width]),
      'image_id': parsed[IMAGE_ID],
      'label_divisor': tf.cast(parsed[LABEL_DIVISOR], tf.int32),
  }
