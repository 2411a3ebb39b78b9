"""The activation functions of the backbones, by name.

DeepLab2's ImageNet backbones come with ReLU (MaX-DeepLab-S's backbone,
ResNet-50) or with GeLU (the Axial-ResNet-50 of kMaX-DeepLab, the ImageNet-22K
checkpoint `maxs_gelu_imagenet_22k_1k_224`). DeepLab2 uses GeLU in its exact
form x * Phi(x) with the Gaussian CDF Phi written with erf (Hendrycks and Gimpel,
"Gaussian Error Linear Units", 2016), not the tanh approximation; so does this
module.
"""
import tensorflow as tf

RELU = 'relu'
GELU = 'gelu'
ACTIVATIONS = (RELU, GELU)


def _exact_gelu(x):
  return tf.nn.gelu(x, approximate=False)


def get_activation(name):
  """Returns the activation function called `name` ('relu' or 'gelu').

  Raises:
    ValueError: On an unknown name.
  """
  if name == RELU:
    return tf.nn.relu
  if name == GELU:
    return _exact_gelu
  raise ValueError(f'activation must be one of {ACTIVATIONS}, got {name!r}.')
