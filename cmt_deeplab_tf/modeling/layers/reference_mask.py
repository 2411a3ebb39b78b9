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
the soft reference mask (peak sigmoid(a_n) at the predicted center). Being
analytic, the mask can be evaluated on the grid of any layer (stride 16, 8, 4)
from the same 5 numbers, and costs 5 * C parameters per layer.

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
# float32, and exp(level) stays finite in `log_reference_prior`.
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
  these; `LinearBN` takes both as a list and never materialises the concatenation.
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


def _separable_logits(parameters, height, width):
  """The two axis terms of the reference-mask logits.

  The squared distance is separable, (dy / sy)^2 + (dx / sx)^2, so the logits
  are r = rows[:, :, None] - columns[:, None], each term evaluated on its own
  axis.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    rows: float32 [B, height, N], level - 0.5 * ((y - cy) / sy)^2.
    columns: float32 [B, width, N], 0.5 * ((x - cx) / sx)^2 >= 0.
  """
  center = tf.tanh(parameters[..., 0:2])           # [B, N, 2]
  inverse_sigma = tf.exp(-tf.clip_by_value(parameters[..., 2:4],
                                           *_LOG_SIGMA_RANGE))  # [B, N, 2]
  level = tf.clip_by_value(parameters[..., 4], *_LEVEL_RANGE)  # [B, N]

  def half_square_distance(size, index):
    """0.5 * ((t - c) / s)^2 along one axis, [B, size, N]."""
    offset = (axis_coordinates(size)[tf.newaxis, :, tf.newaxis] -
              center[:, tf.newaxis, :, index])
    return 0.5 * tf.square(offset * inverse_sigma[:, tf.newaxis, :, index])

  rows = level[:, tf.newaxis, :] - half_square_distance(height, 0)
  return rows, half_square_distance(width, 1)


def _outer_difference(rows, columns):
  """[B, H, N], [B, W, N] -> [B, H, W, N] rows - columns."""
  return rows[:, :, tf.newaxis, :] - columns[:, tf.newaxis, :, :]


def gaussian_mask_logits(parameters, height, width):
  """Evaluates Gaussian reference-mask logits on a height x width grid.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    float32 [B, height, width, N] logits; sigmoid gives the soft mask.
  """
  return _outer_difference(*_separable_logits(parameters, height, width))


def log_reference_prior(parameters, height, width):
  """log(sigmoid(r)), the additive clustering prior of the reference masks.

  log sigmoid(r) = r - log(1 + e^r), and e^r = e^rows * e^-columns is
  separable too: one [B, H, W, N] product of two small tables and one log1p
  stand in for TensorFlow's softplus, which costs about four exps per
  element. Exact for every r: rows <= level <= 80 and columns >= 0 keep e^r
  finite, and where e^r underflows, log1p(0) = 0 leaves r, which is
  log sigmoid(r) to float precision.

  Args:
    parameters: float32 [B, N, 5] from `GaussianReferenceMask`.
    height: Grid height (Python int or scalar tensor).
    width: Grid width.

  Returns:
    float32 [B, height, width, N], <= 0 (up to rounding).
  """
  rows, columns = _separable_logits(parameters, height, width)
  exp_logits = (tf.exp(rows)[:, :, tf.newaxis, :] *
                tf.exp(-columns)[:, tf.newaxis, :, :])
  return _outer_difference(rows, columns) - tf.math.log1p(exp_logits)
