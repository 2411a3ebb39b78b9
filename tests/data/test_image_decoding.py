"""One decoder everywhere: the pipeline's JPEG pixels are PIL's (predict's) exactly."""
import glob
import os

import numpy as np
from PIL import Image
import tensorflow as tf

from cmt_deeplab_tf.data import tfrecord_format


def test_pipeline_decoder_equals_pil_on_the_projects_jpegs(synthetic_dir):
  paths = sorted(glob.glob(os.path.join(synthetic_dir, 'val', '*.jpg')))
  assert paths
  fast_differs = 0
  for path in paths:
    with open(path, 'rb') as f:
      encoded = f.read()
    with Image.open(path) as image:
      expected = np.asarray(image.convert('RGB'))
    decoded = tfrecord_format.decode_image(tf.constant(encoded)).numpy()
    np.testing.assert_array_equal(decoded, expected)
    # TensorFlow's default (fast) IDCT is what the pipeline used to get: it differs.
    fast_differs += int((tf.io.decode_jpeg(encoded).numpy() != expected).sum())
  assert fast_differs > 0


def test_png_images_decode_as_pil_does(tmp_path):
  rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
  path = str(tmp_path / 'x.png')
  Image.fromarray(rgba).save(path)
  with open(path, 'rb') as f:
    decoded = tfrecord_format.decode_image(tf.constant(f.read())).numpy()
  np.testing.assert_array_equal(decoded, rgba[..., :3])
