"""Dynamic reference masks and coordinate features (location-sensitive clustering).

CMT-DeepLab [1] makes the clustering location-sensitive: every cluster center
predicts a dynamic reference mask, pixel features carry their coordinates
(coordinate convolution [2]), and a mask-approximation loss pulls each reference
mask toward its matched ground-truth mask. The paper's exact parameterisation is
not public; ours is an axis-aligned 2-D Gaussian per center:

  r_n(y, x) = a_n - ((y - cy_n)^2 / sy_n^2 + (x - cx_n)^2 / sx_n^2) / 2

with (cy, cx) = tanh(.) in the normalised [-1, 1] image frame, (sy, sx) = exp(.)
(log-sigma clipped to [-6, 3] for numerical safety) and a level a_n (clipped to
[-80, 80]), all predicted linearly from the center feature. sigmoid(r_n) is
the soft reference mask (peak sigmoid(a_n) at the predicted center), and
log sigmoid(r_n) the log prior it adds to the clustering logits. Being
analytic, the mask can be evaluated on the grid of any layer (stride 16, 8, 4)
from the same 5 numbers, and costs 5 * C parameters per layer.

This module is the plain form; `fast_path.separable_log_reference_prior`
evaluates the same prior faster at inference.

[1] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
[2] An intriguing failing of convolutional neural networks and the CoordConv
    solution, Liu et al., NeurIPS 2018.
"""
import tensorflow as tf
import tf_keras

GAUSSIAN = 'gaussian'
NUM_GAUSSIAN_PARAMETERS = 5  # cy, cx, log sy, log sx, level.
# At initialisation every reference mask covers the whole image (sigma = 1 in
# the [-1, 1] frame) at level 0 (sigmoid = 0.5 at its center).
_INITIAL_LOG_SIGMA = 0.0
# Sigma is kept within [e^-6, e^3] of the image half-size (about 0.002 to 20).
_LOG_SIGMA_RANGE = (-6.0, 3.0)
# The level (peak logit) is kept within +-80: sigmoid(80) is already 1 in
# float32, and exp(level) stays finite (see `fast_path`).
_LEVEL_RANGE = (-80.0, 80.0)


def axis_coordinates(size):
  """float32 [size] positions spanning [-1, 1] (0 for a size-1 axis)."""
  steps = tf.cast(tf.range(size), tf.float32)
  last = tf.cast(tf.maximum(size - 1, 1), tf.float32)
  single = tf.cast(tf.equal(size, 1), tf.float32)
  return 2.0 * steps / last - 1.0 + single


def normalized_coordinates(height, width, dtype=tf.float32):
  """Returns [height, width, 2] (y, x) pixel coordinates spanning [-1, 1].

  The first and last row (column) sit at -1 and 1, matching align-corners
  resizing of 32k+1 crops; a size-1 axis sits at 0.
  """
  y, x = tf.meshgrid(axis_coordinates(height), axis_coordinates(width),
                     indexing='ij')
  return tf.cast(tf.stack([y, x], axis=-1), dtype)


def coordinate_features(pixels):
  """The (y, x) coordinate channels [B, H, W, 2] of pixel features [B, H, W, C].

  Coordinate convolution [2] projects the pixel features concatenated with
  these.
  """
  shape = tf.shape(pixels)
  coordinates = normalized_coordinates(shape[1], shape[2], pixels.dtype)
  return tf.tile(coordinates[tf.newaxis], [shape[0], 1, 1, 1])


class GaussianReferenceMask(tf_keras.layers.Layer):
  """Predicts one 2-D Gaussian reference mask per cluster center."""

  def __init__(self, name=None):
    super().__init__(name=name)
    self._projection = tf_keras.layers.Dense(
        NUM_GAUSSIAN_PARAMETERS,
        kernel_initializer=tf_keras.initializers.TruncatedNormal(stddev=0.01),
        bias_initializer=tf_keras.initializers.Constant(
            [0.0, 0.0, _INITIAL_LOG_SIGMA, _INITIAL_LOG_SIGMA, 0.0]),
        name='gaussian_parameters')

  def call(self, centers):
    """Maps centers [B, N, C] to float32 Gaussian parameters [B, N, 5]."""
    return tf.cast(self._projection(centers), tf.float32)


def decode_parameters(parameters):
  """The Gaussian of each center from its 5 predicted numbers.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.

  Returns:
    center: float32 [B, N, 2], (cy, cx) = tanh(.) in [-1, 1].
    sigma: float32 [B, N, 2], (sy, sx) = exp(log-sigma clipped to [-6, 3]).
    level: float32 [B, N], the peak logit a, clipped to [-80, 80].
  """
  center = tf.tanh(parameters[..., 0:2])
  sigma = tf.exp(tf.clip_by_value(parameters[..., 2:4], *_LOG_SIGMA_RANGE))
  level = tf.clip_by_value(parameters[..., 4], *_LEVEL_RANGE)
  return center, sigma, level


def gaussian_mask_logits(parameters, height, width):
  """r_n(y, x) = a_n - ((y - cy_n)^2 / sy_n^2 + (x - cx_n)^2 / sx_n^2) / 2.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    float32 [B, height, width, N] logits; sigmoid gives the soft mask.
  """
  center, sigma, level = decode_parameters(parameters)
  y = axis_coordinates(height)[tf.newaxis, :, tf.newaxis, tf.newaxis]
  x = axis_coordinates(width)[tf.newaxis, tf.newaxis, :, tf.newaxis]

  def per_center(values):  # [B, N] -> [B, 1, 1, N]
    return values[:, tf.newaxis, tf.newaxis, :]
  dy = (y - per_center(center[..., 0])) / per_center(sigma[..., 0])
  dx = (x - per_center(center[..., 1])) / per_center(sigma[..., 1])
  return per_center(level) - 0.5 * (tf.square(dy) + tf.square(dx))


def log_reference_prior(parameters, height, width):
  """log sigmoid(r), the additive clustering prior of the reference masks.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    float32 [B, height, width, N], <= 0.
  """
  return tf.math.log_sigmoid(gaussian_mask_logits(parameters, height, width))
