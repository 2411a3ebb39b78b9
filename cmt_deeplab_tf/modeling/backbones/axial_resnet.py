"""Axial-ResNet backbones: Axial-R50, Axial-R104 and ResNet-50-beta.

An inception stem (output stride 2) and four stages of residual blocks with base
widths 64, 128, 256, 512, as DeepLab2's `AxialResNet` (Axial-DeepLab, ECCV 2020;
MaX-DeepLab, CVPR 2021). The first block of each stage has stride 2 (in stage 2
it replaces ResNet's max-pool) until `output_stride` is reached; later stages keep
the resolution and dilate their 3x3 convolutions instead. Blocks whose ResNet
stride (the stride they would have in a ResNet with output stride 32) reaches
`use_axial_beyond_stride` are axial blocks; with the default 16 these are blocks
2-6 of stage 4 and all of stage 5, as in MaX-DeepLab-S and kMaX-DeepLab.

CMT-DeepLab (CVPR 2022, supplement Sec. 1) uses Axial-R50 (3-4-6-3 blocks) and
Axial-R104 (3-4-24-3), the MaX-S backbone without its transformer modules; the
supplement's Table 3 compares on a plain ResNet-50.
"""
import math

import gin
import tf_keras

from cmt_deeplab_tf.modeling import gin_checks
from cmt_deeplab_tf.modeling.layers import blocks
from cmt_deeplab_tf.modeling.layers import stems

# Endpoints: activated outputs of stages 2-5.
RES2 = 'res2'
RES3 = 'res3'
RES4 = 'res4'
RES5 = 'res5'
ENDPOINTS = (RES2, RES3, RES4, RES5)
FIRST_STAGE = 2
_STAGE_BASE_FILTERS = 64  # Base width of stage 2; it doubles per stage.
DROP_PATH_SCHEDULES = ('constant', 'linear')


def drop_path_rate_at(resnet_stride, drop_path_rate, schedule,
                      drop_path_beyond_stride):
  """The drop-path rate of a block at a given ResNet stride (DeepLab2 schedule).

  Args:
    resnet_stride: The block's stride in a ResNet with output stride 32.
    drop_path_rate: The rate at the last stage (ResNet stride 32).
    schedule: 'constant' (the same rate everywhere) or 'linear' (rate grows
      linearly from 0 at the input to `drop_path_rate` at stride 32).
    drop_path_beyond_stride: Blocks at smaller ResNet strides are never dropped.

  Returns:
    A float rate in [0, drop_path_rate].

  Raises:
    ValueError: If the schedule is unknown.
  """
  if schedule not in DROP_PATH_SCHEDULES:
    raise ValueError(f'drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, '
                     f'got {schedule!r}.')
  if resnet_stride < drop_path_beyond_stride:
    return 0.0
  if schedule == 'constant':
    return drop_path_rate
  stage = math.log2(resnet_stride) - 1
  return drop_path_rate * stage / 4


def build_stage_blocks(stage, num_blocks, output_stride=16,
                       use_axial_beyond_stride=16, drop_path_rate=0.2,
                       drop_path_schedule='linear', drop_path_beyond_stride=16,
                       width_multiplier=1.0):
  """Builds the residual blocks of one stage.

  Args:
    stage: Stage number, 2..5 (the endpoint `res{stage}`).
    num_blocks: Number of blocks in the stage.
    output_stride: The backbone's output stride (4, 8, 16 or 32).
    use_axial_beyond_stride: Blocks at ResNet strides >= this are axial
      blocks; 0 for none.
    drop_path_rate: Drop-path rate at ResNet stride 32.
    drop_path_schedule: 'constant' or 'linear', see `drop_path_rate_at`.
    drop_path_beyond_stride: Blocks at smaller ResNet strides are not dropped.
    width_multiplier: Scales the stage's base width 64 * 2 ** (stage - 2).

  Returns:
    A list of `num_blocks` blocks (`BottleneckBlock` or `AxialBlock`), each
    called as block(features, training=...), named 'stage{stage}_block{i}'.
  """
  filters = int(round(_STAGE_BASE_FILTERS * 2**(stage - FIRST_STAGE) *
                      width_multiplier))
  input_stride = 2**(stage - 1)  # Its ResNet stride; the stem has stride 2.
  stage_blocks = []
  for index in range(num_blocks):
    resnet_stride = input_stride if index == 0 else 2 * input_stride
    strides = 2 if index == 0 and input_stride < output_stride else 1
    atrous_rate = max(resnet_stride // output_stride, 1)
    rate = drop_path_rate_at(resnet_stride, drop_path_rate, drop_path_schedule,
                             drop_path_beyond_stride)
    name = f'stage{stage}_block{index + 1}'
    if resnet_stride >= use_axial_beyond_stride > 0:
      block = blocks.AxialBlock(filters, strides=strides, drop_path_rate=rate,
                                name=name)
    else:
      block = blocks.BottleneckBlock(filters, strides=strides,
                                     atrous_rate=atrous_rate,
                                     drop_path_rate=rate, name=name)
    stage_blocks.append(block)
  return stage_blocks


@gin.configurable(denylist=['num_blocks', 'name'])  # Set by the factories.
class AxialResNet(tf_keras.Model):
  """Inception stem and stages 2-5 of (Axial-)ResNet; returns res2..res5."""

  def __init__(self,
               num_blocks=(3, 4, 6, 3),
               use_axial_beyond_stride=16,
               output_stride=16,
               drop_path_rate=0.2,
               drop_path_schedule='linear',
               drop_path_beyond_stride=16,
               width_multiplier=1.0,
               name='axial_resnet'):
    """Initializes the backbone.

    Args:
      num_blocks: Four positive block counts, for stages 2 to 5.
      use_axial_beyond_stride: Blocks at ResNet strides >= this are axial
        blocks (16: Axial-R50 as in MaX-DeepLab-S); 0 gives a plain ResNet.
      output_stride: Stride of res5: 4, 8, 16 or 32.
      drop_path_rate: Drop-path rate at ResNet stride 32 (MaX-DeepLab-S: 0.2).
      drop_path_schedule: 'constant' or 'linear' (MaX-DeepLab-S: 'linear').
      drop_path_beyond_stride: Blocks at smaller ResNet strides are not dropped.
      width_multiplier: Scales every width (stem and stages); < 1 for tiny
        test models.
      name: The model name.

    Raises:
      ValueError: On a bad `num_blocks` or `output_stride`.
    """
    num_blocks = tuple(num_blocks)
    if len(num_blocks) != 4 or any(n < 1 for n in num_blocks):
      raise ValueError('AxialResNet num_blocks must be 4 positive counts, got '
                       f'num_blocks={num_blocks}.')
    if output_stride not in (4, 8, 16, 32):
      raise ValueError('AxialResNet output_stride must be 4, 8, 16 or 32, got '
                       f'output_stride={output_stride}.')
    super().__init__(name=name)
    self.output_stride = output_stride
    self.stem = stems.InceptionStem(width_multiplier=width_multiplier)
    self.stages = [
        build_stage_blocks(
            stage, count, output_stride=output_stride,
            use_axial_beyond_stride=use_axial_beyond_stride,
            drop_path_rate=drop_path_rate,
            drop_path_schedule=drop_path_schedule,
            drop_path_beyond_stride=drop_path_beyond_stride,
            width_multiplier=width_multiplier)
        for stage, count in enumerate(num_blocks, start=FIRST_STAGE)]

  def call(self, images, training=None, after_block=None):
    """Runs the backbone.

    Args:
      images: A [batch, H, W, 3] tensor of any size.
      training: Whether batch norms use batch statistics and drop path drops.
      after_block: Optional callable (stage_index, block_index, features) ->
        features, run after every block (stage_index 0 is the RES2 stage);
        the models insert transformer layers and feature fusions with it.

    Returns:
      A dict of activated features: RES2 [batch, ceil(H/4), ceil(W/4), 256w],
      RES3 at stride 8 (512w channels), RES4 at stride min(16, output_stride)
      (1024w) and RES5 at stride output_stride (2048w), w = width_multiplier;
      strides are capped at output_stride.
    """
    x = self.stem(images, training=training)
    endpoints = {}
    for stage_index, (endpoint, stage_blocks) in enumerate(
        zip(ENDPOINTS, self.stages)):
      for block_index, block in enumerate(stage_blocks):
        x = block(x, training=training)
        if after_block is not None:
          x = after_block(stage_index, block_index, x)
      endpoints[endpoint] = x
    return endpoints


def axial_r50(**kwargs):
  """Axial-R50: ResNet-50-beta (3-4-6-3) with axial blocks from stride 16."""
  return AxialResNet(num_blocks=(3, 4, 6, 3), name='axial_r50', **kwargs)


def axial_r104(**kwargs):
  """Axial-R104: Axial-R50 with four times the stage-4 blocks (3-4-24-3)."""
  return AxialResNet(num_blocks=(3, 4, 24, 3), name='axial_r104', **kwargs)


def resnet50(**kwargs):
  """ResNet-50-beta (inception stem, 3-4-6-3) without axial attention.

  No drop path, as DeepLab2's `ResNet50Beta`.
  """
  kwargs = {'drop_path_rate': 0.0, **kwargs}
  gin_checks.reject_bindings('AxialResNet',
                             {'use_axial_beyond_stride': 0, **kwargs},
                             'resnet50()')
  return AxialResNet(num_blocks=(3, 4, 6, 3), use_axial_beyond_stride=0,
                     name='resnet50', **kwargs)
