"""Multiply-adds of a model's inference graph, einsum and attention included.

The paper's FLOPs (supplement Table 2) are multiply-adds of the inference graph
at 1200x800, batch 1. TF's profiler reports 2 FLOPs per multiply-add and skips
`Einsum` (where attention lives), so we walk the traced graph instead and count
the multiply-adds of every contraction:

  Conv2D                 output elements x kernel height x width x input channels
  DepthwiseConv2dNative  output elements x kernel height x width
  MatMul / BatchMatMul   batch x M x N x K
  Einsum                 product of the sizes of all distinct indices

Element-wise ops (BN, activations, softmax, resizing) are not counted; they are
below 1% of the total for these models.
"""
import numpy as np
import tensorflow as tf


def _static_shape(tensor):
  shape = tensor.shape
  if shape.rank is None or any(d is None for d in shape.as_list()):
    raise ValueError(f'Tensor {tensor.name} has no static shape {shape}; '
                     'trace with a fully defined input shape.')
  return shape.as_list()


def _einsum_multiply_adds(op):
  equation = op.get_attr('equation').decode()
  inputs = equation.split('->')[0].split(',')
  sizes = {}
  for subscripts, tensor in zip(inputs, op.inputs):
    for letter, size in zip(subscripts, _static_shape(tensor)):
      sizes[letter] = size
  return int(np.prod(list(sizes.values()), dtype=np.int64))


def _op_multiply_adds(op):
  """Multiply-adds of one graph op (0 for ops that are not contractions)."""
  if op.type == 'Conv2D':
    kernel = _static_shape(op.inputs[1])
    return int(np.prod(_static_shape(op.outputs[0]), dtype=np.int64) *
               kernel[0] * kernel[1] * kernel[2])
  if op.type == 'DepthwiseConv2dNative':
    kernel = _static_shape(op.inputs[1])
    return int(np.prod(_static_shape(op.outputs[0]), dtype=np.int64) *
               kernel[0] * kernel[1])
  if op.type in ('MatMul', 'BatchMatMulV2', 'BatchMatMulV3'):
    a = _static_shape(op.inputs[0])
    transpose_a = op.get_attr('transpose_a' if op.type == 'MatMul' else 'adj_x')
    inner = a[-2] if transpose_a else a[-1]
    return int(np.prod(_static_shape(op.outputs[0]), dtype=np.int64) * inner)
  if op.type == 'Einsum':
    return _einsum_multiply_adds(op)
  return 0


def multiply_adds_of_function(concrete_function):
  """Sums multiply-adds over the ops of a traced function, by op type."""
  counts = {}
  for op in concrete_function.graph.get_operations():
    count = _op_multiply_adds(op)
    if count:
      counts[op.type] = counts.get(op.type, 0) + count
  return counts


def count_multiply_adds(model, height, width, batch_size=1):
  """Multiply-adds of `model(images, training=False)` at a given input size.

  Args:
    model: A Keras model mapping [B, H, W, 3] images to outputs.
    height: Input height.
    width: Input width.
    batch_size: Input batch size.

  Returns:
    (total multiply-adds, dict of multiply-adds by op type).
  """
  function = tf.function(lambda images: model(images, training=False),
                         autograph=False)
  concrete = function.get_concrete_function(
      tf.TensorSpec([batch_size, height, width, 3], tf.float32))
  counts = multiply_adds_of_function(concrete)
  return sum(counts.values()), counts
