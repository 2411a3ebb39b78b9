"""Geometric augmentation and resizing of an (image, panoptic label) pair.

All randomness is stateless and driven by an explicit seed [2], so the pipeline is
deterministic for a given data set seed however many threads run it. Images are
resized bilinearly and labels by nearest neighbour; padding fills the image with the
mean pixel (0 after normalisation) and the label with void.
"""
from typing import Sequence, Tuple

import tensorflow as tf

MEAN_PIXEL = 127.5


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> float32 in [-1, 1] (mean pixel 127.5 maps to 0)."""
  return tf.cast(image, tf.float32) / MEAN_PIXEL - 1.0


def resize_pair(image: tf.Tensor, label: tf.Tensor,
                size: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes image [H, W, 3] (bilinear) and label [H, W] (nearest) to `size` [2]."""
  image = tf.image.resize(image, size, method='bilinear')
  label = tf.image.resize(label[..., None], size, method='nearest')[..., 0]
  return image, label


def pad_pair(image: tf.Tensor, label: tf.Tensor, height: int, width: int,
             void_value: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads at the bottom/right to at least height x width (mean pixel / void)."""
  pad_h = tf.maximum(height - tf.shape(image)[0], 0)
  pad_w = tf.maximum(width - tf.shape(image)[1], 0)
  paddings = [[0, pad_h], [0, pad_w]]
  image = tf.pad(image - MEAN_PIXEL, paddings + [[0, 0]]) + MEAN_PIXEL
  label = tf.pad(label, paddings, constant_values=void_value)
  return image, label


def random_scale(image: tf.Tensor, label: tf.Tensor, min_scale: float, max_scale: float,
                 scale_step: float, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Rescales by a factor drawn from {min_scale, min_scale + step, ..., max_scale}."""
  if min_scale == max_scale == 1.0:
    return image, label
  if scale_step > 0:
    num_steps = int(round((max_scale - min_scale) / scale_step)) + 1
    index = tf.random.stateless_uniform([], seed, 0, num_steps, dtype=tf.int32)
    scale = min_scale + tf.cast(index, tf.float32) * scale_step
  else:
    scale = tf.random.stateless_uniform([], seed, min_scale, max_scale)
  size = tf.cast(tf.shape(image)[:2], tf.float32) * scale
  return resize_pair(image, label, tf.cast(tf.round(size), tf.int32))


def random_crop(image: tf.Tensor, label: tf.Tensor, crop_size: Sequence[int],
                void_value: int, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads to at least the crop size, then takes a random crop of it."""
  crop_h, crop_w = crop_size
  image, label = pad_pair(image, label, crop_h, crop_w, void_value)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  offset = tf.random.stateless_uniform([2], seed, 0, tf.int32.max, dtype=tf.int32)
  top = offset[0] % (height - crop_h + 1)
  left = offset[1] % (width - crop_w + 1)
  image = image[top:top + crop_h, left:left + crop_w]
  label = label[top:top + crop_h, left:left + crop_w]
  return tf.ensure_shape(image, [crop_h, crop_w, 3]), tf.ensure_shape(label, [crop_h, crop_w])


def random_flip(image: tf.Tensor, label: tf.Tensor,
                seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Flips image and label left-right together with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  image = tf.where(flip, tf.reverse(image, [1]), image)
  label = tf.where(flip, tf.reverse(label, [1]), label)
  return image, label


def fit_to_size(image: tf.Tensor, label: tf.Tensor, height: int, width: int
                ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Shrinks (keeping the aspect ratio) an image that exceeds height x width.

  Images that fit are left as they are, so evaluation at COCO's 641 x 641 or
  Cityscapes' 1025 x 2049 sees every pixel at its original resolution.

  Returns:
    image, label, and the int32 [2] size of the (possibly resized) content.
  """
  size = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.minimum(1.0, tf.minimum(height / size[0], width / size[1]))
  new_size = tf.cast(tf.math.floor(size * scale), tf.int32)
  image, label = tf.cond(
      scale < 1.0, lambda: resize_pair(image, label, new_size),
      lambda: (tf.cast(image, tf.float32), label))
  return image, label, new_size
