"""ONNX export with tf2onnx: the network at a fixed input size.

As for TFLite (`serving.tflite`) the file holds the network alone: input `image`
float32 [1, H', W', 3] (padded, normalised), outputs `class_logits` and
`mask_logits`; padding and post-processing run in NumPy (`serving.runtimes`),
configured by `export_lib.deployment_metadata`, stored as JSON in the model's
`metadata_props` under `METADATA_KEY`. The post-processing stays out of the
graph: tf2onnx converts segment sums over rank-1 ids only.

Two TensorFlow ops get handlers of our own, in standard ONNX ops:
  Log1p           (not in ONNX; the CMT layers' log-sigmoid prior): Eigen's own
                  formula, x where 1 + x == 1, else x * log(1 + x) / ((1 + x) - 1),
                  accurate to a few ulps.
  ResizeBilinear  tf2onnx's handler passes float32 scales at a fixed size, and
                  9 * float32(17 / 9) floors to 16: ours passes the output size
                  (align-corners or asymmetric, as TF's op).
The opset is the newest tf2onnx maps to an ONNX IR version.

At a dynamic input size tf2onnx's reshape folding breaks the attention's head
split (ONNX Runtime refuses the model), hence the fixed size.
"""
import json
from typing import Dict, Optional, Tuple

import numpy as np
import onnx as onnx_proto
import tf2onnx
from tf2onnx import constants as tf2onnx_constants
from tf2onnx import utils as tf2onnx_utils

from cmt_deeplab_tf.serving import export_lib

METADATA_KEY = 'cmt_deeplab_tf'
OPSET = max(tf2onnx_constants.OPSET_TO_IR_VERSION)


def _log1p(ctx, node, name, args):
  """Log1p(x) -> Where(1 + x == 1, x, x * Log(1 + x) / ((1 + x) - 1))."""
  del name, args
  x = node.input[0]
  dtype = tf2onnx_utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
  one = ctx.make_const(tf2onnx_utils.make_name('one'), np.array(1, dtype)).output[0]
  x1p = ctx.make_node('Add', [x, one]).output[0]
  ratio = ctx.make_node('Div', [ctx.make_node('Log', [x1p]).output[0],
                                ctx.make_node('Sub', [x1p, one]).output[0]]).output[0]
  large = ctx.make_node('Mul', [x, ratio]).output[0]
  small = ctx.make_node('Equal', [x1p, one]).output[0]
  outputs, shapes, dtypes = node.output, node.output_shapes, node.output_dtypes
  ctx.remove_node(node.name)
  ctx.make_node('Where', [small, x, large], outputs=outputs, shapes=shapes, dtypes=dtypes)


def _resize_bilinear(ctx, node, name, args):
  """ResizeBilinear [B, h, w, C] -> Resize (linear) in NCHW with the output size."""
  del name, args
  if node.get_attr_value('half_pixel_centers', False):
    raise ValueError(f'{node.name}: half-pixel resizing has no handler here.')
  mode = 'align_corners' if node.get_attr_value('align_corners', False) else 'asymmetric'

  def const(value):
    return ctx.make_const(tf2onnx_utils.make_name('resize'), value).output[0]

  nchw = ctx.make_node('Transpose', [node.input[0]], {'perm': [0, 3, 1, 2]}).output[0]
  batch_channels = ctx.make_node('Slice', [ctx.make_node('Shape', [nchw]).output[0],
                                           const(np.array([0], np.int64)),
                                           const(np.array([2], np.int64))]).output[0]
  height_width = ctx.make_node('Cast', [node.input[1]],
                               attr={'to': onnx_proto.TensorProto.INT64}).output[0]
  sizes = ctx.make_node('Concat', [batch_channels, height_width], {'axis': 0}).output[0]
  empty = const(np.array([], np.float32))
  resized = ctx.make_node('Resize', [nchw, empty, empty, sizes],
                          attr={'mode': 'linear', 'coordinate_transformation_mode': mode})
  outputs, shapes, dtypes = node.output, node.output_shapes, node.output_dtypes
  ctx.remove_node(node.name)
  ctx.make_node('Transpose', resized.output, {'perm': [0, 2, 3, 1]}, outputs=outputs,
                shapes=shapes, dtypes=dtypes)


CUSTOM_OP_HANDLERS = {'Log1p': (_log1p, []), 'ResizeBilinear': (_resize_bilinear, [])}


def convert(network, metadata: Dict[str, object]):
  """A `network_function` -> an ONNX ModelProto carrying `metadata`."""
  spec = network.input_signature
  model, _ = tf2onnx.convert.from_function(
      network, input_signature=spec, opset=OPSET,
      custom_op_handlers=CUSTOM_OP_HANDLERS)
  entry = model.metadata_props.add()
  entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
  return model


def read_metadata(custom_metadata: Dict[str, str], source: str) -> Dict[str, object]:
  """The metadata of an ONNX Runtime session's `get_modelmeta().custom_metadata_map`."""
  if METADATA_KEY not in custom_metadata:
    raise ValueError(f'{source} has no {METADATA_KEY} metadata; export it with '
                     'cmt_deeplab_tf.export --format=onnx.')
  return json.loads(custom_metadata[METADATA_KEY])


def export(model_dir: str, output_path: str, checkpoint: Optional[str] = None,
           input_size: Optional[Tuple[int, int]] = None) -> None:
  """Exports a training run as an ONNX file (see the module docstring).

  Args:
    model_dir: the `--model_dir` of a training run.
    output_path: the .onnx file to write.
    checkpoint: a checkpoint prefix; default: the latest one in model_dir.
    input_size: the fixed (H', W'); default: the run's evaluation crop size.
  """
  network, metadata = export_lib.load_network(model_dir, checkpoint, input_size)
  model = convert(network, metadata)
  with open(output_path, 'wb') as f:
    f.write(model.SerializeToString())
