"""Initialising a new run's model from a checkpoint (`ExperimentConfig.init_checkpoint`).

Formats: 'native', a checkpoint whose root holds `model` (as this trainer
writes), and 'deeplab2', a DeepLab2 (or Model Garden) checkpoint mapped by
`checkpoints.deeplab2`. Modules: 'all', 'backbone', or 'all_but_class_head':
fine-tuning on another class set, where the class-logit layers (the only ones
whose width is the class count) keep their initial values and every other
variable is copied from a model of the checkpoint's class count.
"""
import re
from typing import Callable, Optional

from absl import logging
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf.checkpoints import deeplab2

NATIVE = 'native'
DEEPLAB2 = 'deeplab2'
FORMATS = (NATIVE, DEEPLAB2)
# The layers whose width is the class count: re-initialised by
# init_checkpoint_modules='all_but_class_head'.
_CLASS_LOGIT_LAYERS = re.compile(
    r'(class_head/classifier|semantic_head/conv_head/output)/(kernel|bias):0$')

# num_classes -> the configured model with that class count, every variable created.
ModelFn = Callable[[int], tf_keras.Model]


def restore_init_checkpoint(model: tf_keras.Model, path: str, modules: str,
                            checkpoint_format: str = NATIVE,
                            build_model: Optional[ModelFn] = None) -> None:
  """Initialises the model, its backbone, or all but its class-logit layers.

  Args:
    model: The built model (all variables created).
    path: The checkpoint prefix, or a directory holding one checkpoint.
    modules: 'all', 'backbone' or 'all_but_class_head'.
    checkpoint_format: 'native' (another run of this trainer) or 'deeplab2'.
    build_model: builds the configured model for a class count; needed by a
      native 'all_but_class_head' (the checkpoint's class count is read from it).

  Raises:
    ValueError: Naming the field, on a bad value, a missing checkpoint, a
      checkpoint of another architecture, or another class count with 'all'.
  """
  if modules not in deeplab2.MODULES:
    raise ValueError(f'ExperimentConfig.init_checkpoint_modules={modules!r}: expected '
                     f'one of {deeplab2.MODULES}.')
  if checkpoint_format not in FORMATS:
    raise ValueError(f'ExperimentConfig.init_checkpoint_format={checkpoint_format!r}: '
                     f'expected one of {FORMATS}.')
  try:
    path = deeplab2.find_checkpoint(path)
  except ValueError as e:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: {e}') from e
  if checkpoint_format == DEEPLAB2:
    _restore_deeplab2(model, path, modules)
    return
  if modules == deeplab2.ALL_BUT_CLASS_HEAD:
    _restore_all_but_class_logits(model, path, build_model)
  elif modules == deeplab2.ALL:
    _check_class_count(model, path, modules)
    _restore_native(model, path, modules)
  else:
    _restore_native(tf.train.Checkpoint(backbone=model.backbone), path, modules)
  logging.info('Initialised %s from %s.', modules, path)


def _restore_deeplab2(model: tf_keras.Model, path: str, modules: str) -> None:
  checkpoint = deeplab2.DeepLab2Checkpoint(path)
  plan = deeplab2.plan_import(model, checkpoint, modules)
  deeplab2.apply_plan(plan, checkpoint)
  logging.info('Initialised %s from the DeepLab2 checkpoint %s (%s): %d variables '
               'mapped, %d keys skipped, %d variables kept initial.', modules, path,
               plan.layout, len(plan.mappings), len(plan.skipped), len(plan.kept_initial))


def _restore_native(target, path: str, modules: str) -> None:
  status = tf.train.Checkpoint(model=target).read(path).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path} does not match the model '
                     f'({modules}): {str(e)[:500]}') from e


def _check_class_count(model: tf_keras.Model, path: str, modules: str) -> int:
  """The checkpoint's class count + 1; an error if it differs with 'all'."""
  theirs = {shape[-1] for name, shape in tf.train.list_variables(path)
            if re.search(r'class_head/_classifier/bias/', name)}
  ours = {v.shape[-1] for v in model.variables
          if re.search(r'class_head/classifier/bias:0$', v.name)}
  if len(theirs) != 1 or len(ours) != 1:
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: expected one '
                     'class-logit width in the checkpoint and in the model, found '
                     f'{sorted(theirs)} and {sorted(ours)}.')
  if theirs != ours and modules == deeplab2.ALL:
    raise ValueError(
        f'ExperimentConfig.init_checkpoint={path} predicts {theirs.pop() - 1} classes, '
        f'the model {ours.pop() - 1}: the class counts differ; use '
        "ExperimentConfig.init_checkpoint_modules='all_but_class_head' to "
        're-initialise the class-logit layers.')
  return theirs.pop()


def _restore_all_but_class_logits(model: tf_keras.Model, path: str,
                                  build_model: Optional[ModelFn]) -> None:
  """Restores the configured model built with the checkpoint's class count, then
  copies every variable but the class-logit layers (which keep their values).
  """
  if build_model is None:
    raise ValueError("init_checkpoint_modules='all_but_class_head' needs build_model "
                     '(the configured model for the checkpoint\'s class count).')
  source = build_model(_check_class_count(model, path, deeplab2.ALL_BUT_CLASS_HEAD) - 1)
  _restore_native(source, path, deeplab2.ALL_BUT_CLASS_HEAD)
  if len(source.variables) != len(model.variables):
    raise ValueError(f'ExperimentConfig.init_checkpoint={path}: the model has '
                     f'{len(model.variables)} variables, the checkpoint\'s '
                     f'{len(source.variables)}.')
  for theirs, ours in zip(source.variables, model.variables):
    if _CLASS_LOGIT_LAYERS.search(ours.name):
      continue
    if theirs.shape != ours.shape:
      raise ValueError(f'ExperimentConfig.init_checkpoint={path}: {theirs.name} '
                       f'{theirs.shape} does not fit {ours.name} {ours.shape}.')
    ours.assign(theirs)
