"""Optimizers of MaX-DeepLab / CMT-DeepLab training, from Model Garden's factory.

AdamW with decoupled weight decay, a linear warm-up into a polynomial decay, and a
smaller learning rate for the (ImageNet-pretrained) backbone. Adam is invariant to
a rescaling of the gradients, so the backbone multiplier cannot be a gradient
scale: the backbone gets its own optimizer whose schedule is the main one times
the multiplier (DeepLab2 does the same with a multi-optimizer).

The optimizer is Model Garden's AdamW (`legacy_adamw.AdamWeightDecay`) with one
change of schedule, not of values: a variable's weight decay waits for its gradient
(`AdamWeightDecayAfterGradient`).
"""
import dataclasses
from typing import List, Optional, Tuple

import gin
import tensorflow as tf
import tf_keras

from official.modeling.optimization import legacy_adamw
from official.modeling.optimization import optimizer_factory
from official.modeling.optimization.configs import optimization_config

# Variables whose names contain one of these are not weight-decayed.
NO_WEIGHT_DECAY = ['batch_normalization', 'sync_batch_normalization', 'bias', 'beta',
                   'gamma', 'LayerNorm', 'layer_norm']


# `PanopticTask.build_optimizer_config` sets the schedule's length from
# ExperimentConfig.train_steps.
@gin.configurable(denylist=['train_steps'])
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What the paper's training recipe sets.

  Defaults follow MaX-DeepLab / CMT-DeepLab on COCO: AdamW, learning rate 1e-3
  (Cityscapes: 3e-4, supplement Sec. 2), poly decay with power 0.9, 5k warm-up
  steps, backbone learning-rate multiplier 0.1.
  """
  learning_rate: float = 1e-3
  train_steps: int = 100_000
  warmup_steps: int = 5000
  decay_power: float = 0.9
  end_learning_rate: float = 0.0
  weight_decay: float = 0.05
  backbone_learning_rate_multiplier: float = 0.1
  beta_1: float = 0.9
  beta_2: float = 0.999
  epsilon: float = 1e-6
  gradient_clip_norm: Optional[float] = None

  def __post_init__(self):
    if self.learning_rate <= 0:
      raise ValueError(f'OptimizerConfig.learning_rate must be > 0, got {self.learning_rate}.')
    if self.train_steps < 1 or self.warmup_steps < 0:
      raise ValueError('OptimizerConfig.train_steps must be >= 1 and warmup_steps >= 0, '
                       f'got {self.train_steps}, {self.warmup_steps}.')
    if self.warmup_steps >= self.train_steps:
      raise ValueError(
          f'OptimizerConfig.warmup_steps ({self.warmup_steps}) must be smaller than '
          f'train_steps ({self.train_steps}): the warm-up ramps towards the decayed '
          'learning rate at its end, which would be the end learning rate.')
    if self.backbone_learning_rate_multiplier < 0:
      raise ValueError('OptimizerConfig.backbone_learning_rate_multiplier must be >= 0.')


class AdamWeightDecayAfterGradient(legacy_adamw.AdamWeightDecay):
  """Model Garden's AdamW, whose weight decay of a variable waits for its gradient.

  The decoupled decay, var -= lr * weight_decay * var, reads no gradient, so the
  executor would run it as soon as the forward pass has read the variable, while
  the backward pass still holds that value: the assignment then copies the
  variable (copy-on-write), one extra copy of every decayed weight at the step's
  peak. A control dependency on the variable's gradient moves the decay after the
  backward pass's use of the value; the update is the same.
  """

  def _resource_apply_dense(self, grad, var, apply_state=None):
    with tf.control_dependencies([grad]):
      return super()._resource_apply_dense(grad, var, apply_state)

  def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
    with tf.control_dependencies([grad]):
      return super()._resource_apply_sparse(grad, var, indices, apply_state)


def _params(config: OptimizerConfig, scale: float) -> optimization_config.OptimizationConfig:
  learning_rate = config.learning_rate * scale
  return optimization_config.OptimizationConfig({
      'optimizer': {'type': 'adamw', 'adamw': {
          'weight_decay_rate': config.weight_decay,
          'exclude_from_weight_decay': NO_WEIGHT_DECAY,
          'beta_1': config.beta_1, 'beta_2': config.beta_2, 'epsilon': config.epsilon,
          'gradient_clip_norm': 0.0}},  # Clipping is global, in the train step.
      'learning_rate': {'type': 'polynomial', 'polynomial': {
          'initial_learning_rate': learning_rate,
          'decay_steps': config.train_steps,
          'end_learning_rate': config.end_learning_rate * scale,
          'power': config.decay_power}},
      'warmup': ({'type': 'linear', 'linear': {
          'warmup_steps': config.warmup_steps, 'warmup_learning_rate': 0.0}}
                 if config.warmup_steps else {}),
  })


def build_optimizer(config: OptimizerConfig, scale: float = 1.0
                    ) -> AdamWeightDecayAfterGradient:
  """An AdamW optimizer whose learning-rate schedule is scaled by `scale`.

  The learning rate comes from Model Garden's factory; the optimizer takes the
  arguments the factory would give its AdamW.
  """
  params = _params(config, scale)
  arguments = {name: value for name, value in params.optimizer.get().as_dict().items()
               if value is not None}
  learning_rate = optimizer_factory.OptimizerFactory(params).build_learning_rate()
  return AdamWeightDecayAfterGradient(learning_rate=learning_rate, **arguments)


def split_backbone_variables(model: tf_keras.Model
                             ) -> Tuple[List[tf.Variable], List[tf.Variable]]:
  """Splits the trainable variables into (backbone, the rest).

  The model names its backbone variables (`backbone_variables`, two backbones
  for RFN), so the optimizer needs no knowledge of the backbone's class.

  Raises:
    TypeError: If the model has no `backbone_variables`.
  """
  if not hasattr(model, 'backbone_variables'):
    raise TypeError(f'Model {model.name!r} ({type(model).__name__}) has no '
                    '`backbone_variables`: the backbone learning-rate multiplier '
                    'needs to know which variables are the backbone\'s.')
  backbone_ids = {id(v) for v in model.backbone_variables}
  backbone = [v for v in model.trainable_variables if id(v) in backbone_ids]
  rest = [v for v in model.trainable_variables if id(v) not in backbone_ids]
  return backbone, rest
