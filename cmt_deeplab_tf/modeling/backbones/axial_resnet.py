"""Axial-ResNet backbones: Axial-R50, Axial-R104 and ResNet-50-beta.

An inception stem (or ResNet's 7x7 stem; output stride 2) and four stages of
residual blocks with base widths 64, 128, 256, 512, as DeepLab2's `AxialResNet`
(Axial-DeepLab, ECCV 2020; MaX-DeepLab, CVPR 2021), with ReLU or exact GeLU
(`activations`; kMaX-DeepLab's Axial-ResNet-50 uses GeLU). The first block of each stage has stride 2 (in stage 2
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
from cmt_deeplab_tf.modeling.layers import activations
from cmt_deeplab_tf.modeling.layers import blocks
from cmt_deeplab_tf.modeling.layers import stems

# Endpoints: activated outputs of stages 2-5 ...
RES2 = 'res2'
RES3 = 'res3'
RES4 = 'res4'
RES5 = 'res5'
ENDPOINTS = (RES2, RES3, RES4, RES5)
# ... and the same before the activation (DeepLab2's `stage2`..`stage5`).
STAGE2 = 'stage2'
STAGE3 = 'stage3'
STAGE4 = 'stage4'
STAGE5 = 'stage5'
PREACTIVATIONS = (STAGE2, STAGE3, STAGE4, STAGE5)
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
                       width_multiplier=1.0, activation=activations.RELU):
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
    activation: 'relu' or 'gelu', see `activations`.

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
                                activation=activation, name=name)
    else:
      block = blocks.BottleneckBlock(filters, strides=strides,
                                     atrous_rate=atrous_rate,
                                     drop_path_rate=rate,
                                     activation=activation, name=name)
    stage_blocks.append(block)
  return stage_blocks


# Set by the named model configs (`build_model.width_multiplier`, the stem of
# `cmt_deeplab_r50`) and by the factories, so not gin-bindable: a binding
# would be overridden.
@gin.configurable(denylist=['num_blocks', 'name', 'width_multiplier', 'stem_type'])
class AxialResNet(tf_keras.Model):
  """Stem and stages 2-5 of (Axial-)ResNet; returns res2..res5, stage2..5."""

  def __init__(self,
               num_blocks=(3, 4, 6, 3),
               use_axial_beyond_stride=16,
               output_stride=16,
               drop_path_rate=0.2,
               drop_path_schedule='linear',
               drop_path_beyond_stride=16,
               width_multiplier=1.0,
               activation=activations.RELU,
               stem_type=stems.INCEPTION,
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
      width_multiplier: Scales every width (stem and stages) with DeepLab2's
        rounding int(round(c * w)); < 1 for tiny test models. Set through
        `build_model.width_multiplier`, not bindable here.
      activation: 'relu' (MaX-DeepLab-S's ImageNet backbone, ResNet-50) or
        'gelu' (exact; kMaX-DeepLab's Axial-ResNet-50, ImageNet-22K). The gin
        switch `AxialResNet.activation`.
      stem_type: 'inception' (ResNet-50-beta, Axial-ResNet) or 'resnet' (the
        original 7x7 stem, DeepLab2's `resnet50`); chosen by the named config
        (`cmt_deeplab_r50` has the ResNet stem), not bindable here.
      name: The model name.

    Raises:
      ValueError: On a bad `num_blocks`, `output_stride`, `activation` or
        `stem_type`.
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
    # The block-output activation (blocks return their sum unactivated).
    self.activation = activations.get_activation(activation)
    self.stem = stems.build_stem(stem_type, width_multiplier, activation)
    self.stages = [
        build_stage_blocks(
            stage, count, output_stride=output_stride,
            use_axial_beyond_stride=use_axial_beyond_stride,
            drop_path_rate=drop_path_rate,
            drop_path_schedule=drop_path_schedule,
            drop_path_beyond_stride=drop_path_beyond_stride,
            width_multiplier=width_multiplier, activation=activation)
        for stage, count in enumerate(num_blocks, start=FIRST_STAGE)]

  def call(self, images, training=None):
    """Runs the backbone.

    The models run the same stem and blocks in their own forward loop, which
    places transformer layers after blocks (MaX-DeepLab-S's stage 5) and fuses
    features (RFN; `cmt_deeplab.CMTDeepLab.forward`).

    Args:
      images: A [batch, H, W, 3] tensor of any size.
      training: Whether batch norms use batch statistics and drop path drops.

    Returns:
      A dict of activated features: RES2 [batch, ceil(H/4), ceil(W/4), 256w],
      RES3 at stride 8 (512w channels), RES4 at stride min(16, output_stride)
      (1024w) and RES5 at stride output_stride (2048w), w = width_multiplier;
      strides are capped at output_stride. STAGE2..STAGE5 hold the same
      features before the activation.
    """
    x = self.stem(images, training=training)
    endpoints = {}
    for stage_index, stage_blocks in enumerate(self.stages):
      for block in stage_blocks:
        preactivation = block(x, training=training, activate_output=False)
        x = self.activation(preactivation)
      endpoints[PREACTIVATIONS[stage_index]] = preactivation
      endpoints[ENDPOINTS[stage_index]] = x
    return endpoints

def axial_r50(**kwargs):
  """Axial-R50: ResNet-50-beta (3-4-6-3) with axial blocks from stride 16."""
  return AxialResNet(num_blocks=(3, 4, 6, 3), name='axial_r50', **kwargs)


def axial_r104(**kwargs):
  """Axial-R104: Axial-R50 with four times the stage-4 blocks (3-4-24-3)."""
  return AxialResNet(num_blocks=(3, 4, 24, 3), name='axial_r104', **kwargs)


def resnet50(**kwargs):
  """ResNet-50(-beta) (3-4-6-3) without axial attention.

  The inception stem by default (ResNet-50-beta); `stem_type='resnet'` gives
  DeepLab2's `resnet50` (7x7 stem, no max-pool). No drop path, as DeepLab2's
  `ResNet50Beta`.
  """
  kwargs = {'drop_path_rate': 0.0, **kwargs}
  gin_checks.reject_bindings('AxialResNet',
                             {'use_axial_beyond_stride': 0, **kwargs},
                             'resnet50()')
  return AxialResNet(num_blocks=(3, 4, 6, 3), use_axial_beyond_stride=0,
                     name='resnet50', **kwargs)
