"""The memory policy: which parts of a model the backward pass recomputes.

One setting, `build_model(recompute=...)` (gin `build_model.recompute`): 'none',
'all', or a comma-separated list of the part kinds below. The model's forward
loop (`cmt_deeplab.CMTDeepLab.forward`) runs each part of a listed kind through
`recompute.recompute` in training: its activations are not kept for the backward
pass, which runs it again (DeepLab2's `axial_use_recompute_grad`,
`conv_use_recompute_grad`, `transformer_use_recompute_grad`).

Part kinds, each one call of the forward loop per unit:

| kind                | unit recomputed                                        |
|---------------------|--------------------------------------------------------|
| stem                | the backbone's stem (stride-2 activations, the largest) |
| backbone_stage2..5  | each residual block of that backbone stage (res2..res5) |
| pixel_decoder_s16, _s8, _s4 | each block of that pixel-decoder stage (the    |
|                     | fusion before a stage is not recomputed)               |
| transformer_s16, _s8, _s4 | each CMT / dual-path layer on features of that   |
|                     | stride (MaX-S's stage-5 layers are at stride 16)       |
| heads               | the pixel-embedding head, and class + mask heads once  |
|                     | per supervised layer                                   |

The semantic head (training only) is never recomputed. The loss terms have
their own switch (`PanopticLoss.recompute`): the loss is no part of the model.
"""
from typing import FrozenSet

NONE = 'none'
ALL = 'all'
STEM = 'stem'
HEADS = 'heads'
_BACKBONE_STAGES = (2, 3, 4, 5)
_STRIDES = (16, 8, 4)


def backbone_stage(stage: int) -> str:
  """The kind of the blocks of backbone stage `stage` (2..5, endpoint res<stage>)."""
  return f'backbone_stage{stage}'


def pixel_decoder_stage(stride: int) -> str:
  """The kind of the blocks of the pixel-decoder stage at `stride`."""
  return f'pixel_decoder_s{stride}'


def transformer(stride: int) -> str:
  """The kind of the transformer layers on features of `stride`."""
  return f'transformer_s{stride}'


KINDS = ((STEM,) + tuple(backbone_stage(s) for s in _BACKBONE_STAGES) +
         tuple(pixel_decoder_stage(s) for s in _STRIDES) +
         tuple(transformer(s) for s in _STRIDES) + (HEADS,))


def parse(policy: str) -> FrozenSet[str]:
  """The part kinds a policy recomputes.

  Args:
    policy: 'none', 'all', or comma-separated kinds of `KINDS` (spaces
      around them are ignored).

  Returns:
    A frozenset of kinds (empty for 'none', `KINDS` for 'all').

  Raises:
    ValueError: On an unknown kind (naming the valid ones) or an empty or
      repeated one.
  """
  if not isinstance(policy, str):
    raise ValueError(f'build_model.recompute must be a string, got {policy!r}.')
  if policy == NONE:
    return frozenset()
  if policy == ALL:
    return frozenset(KINDS)
  kinds = [kind.strip() for kind in policy.split(',')]
  unknown = [kind for kind in kinds if kind not in KINDS]
  if unknown or len(set(kinds)) != len(kinds):
    raise ValueError(
        f'build_model.recompute={policy!r}: unknown or repeated part kinds '
        f'{unknown or kinds}; expected {NONE!r}, {ALL!r} or a comma-separated '
        f'list of {", ".join(KINDS)}.')
  return frozenset(kinds)
