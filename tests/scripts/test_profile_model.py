"""scripts/profile_model.py: which component an op's time counts to.

The op names are those of a profile of CMT-DeepLab-S's training step at
1025x1025 with a recompute policy (`--step=forward_backward --recompute=...`):
a recomputed layer's rerun names its ops from the layer's own scope, without
the model's.
"""
import pytest

from tests import script_modules

MODEL = 'cmt_deeplab_s'


@pytest.mark.parametrize('op_name, expected', [
    # Ops in the model's scope, and their gradients.
    ('cmt_deeplab_s/axial_r50/stage2_block1/conv2/conv/Conv2D', ('backbone', 'axial_r50')),
    ('gradient_tape/cmt_deeplab_s/pixel_decoder/stride4_block2/conv2/conv/Conv2D/'
     'Conv2DBackpropFilter', ('decoder stride4_block2', 'stride4_block2')),
    ('gradient_tape/cmt_deeplab_s/pixel_decoder/ReluGrad_9',
     ('decoder between blocks', 'between blocks')),
    ('cmt_deeplab_s/pixel_decoder/IdentityN_3', ('decoder between blocks', 'between blocks')),
    ('cmt_deeplab_s/pixel_decoder/decoder_stage2_block0/center_attention/MatMul_6',
     ('transformer s4 decoder_stage2_block0', 'center_attention')),
    ('gradient_tape/cmt_deeplab_s/semantic_head/conv_head/output/Conv2D/'
     'Conv2DBackpropInput', ('heads', 'semantic_head')),
    # Recomputed layers' reruns and their gradients.
    ('gradient_tape/stem/conv3/conv/Conv2D/Conv2DBackpropFilter', ('backbone', 'stem')),
    ('stage5_block3/width_axis/einsum/Einsum', ('backbone', 'stage5_block3')),
    ('stride16_block1/conv3/conv/Conv2D', ('decoder stride16_block1', 'stride16_block1')),
    ('gradient_tape/stride4_fuse/ResizeBilinearGrad', ('decoder stride4_fuse', 'stride4_fuse')),
    ('heads/semantic_head/conv_head/pointwise/conv/Conv2D', ('heads', 'heads')),
    ('gradient_tape/pixel_embedding_head/conv_head/depthwise/depthwise',
     ('heads', 'pixel_embedding_head')),
    ('decoder_stage1_block0/pixel_conv3_bn/batch_norm/FusedBatchNormV3',
     ('transformer s8 decoder_stage1_block0', 'pixel_conv3_bn')),
    # The loss.
    ('logistic_loss_3/Mul', ('loss', 'logistic_loss')),
    ('gradient_tape/ReduceLogSumExp/Tile', ('loss', 'ReduceLogSumExp')),
])
def test_each_op_counts_to_its_component(op_name, expected):
  assert script_modules.load('profile_model').component(op_name, MODEL) == expected
