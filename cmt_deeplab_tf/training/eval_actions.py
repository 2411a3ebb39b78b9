"""Orbit eval actions: what each evaluation leaves in the model dir.

`EvalRecorder` writes `eval/results-<step>.json` (and image summaries) and never
overwrites: a step evaluated again gets `results-<step>.<n>.json`.
`SubmissionRecorder` writes the predictions as `eval/submission-<step>/` in a
benchmark's layout (`evaluation.submission`).
"""
import json
import os
from typing import Dict

from absl import logging
import gin
import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import submission
from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.training import trainer as trainer_lib


def results_path(model_dir: str, step: int) -> str:
  """`<model_dir>/eval/results-<step>.json`: the first evaluation of `step`."""
  return os.path.join(model_dir, 'eval', f'results-{step}.json')


class EvalRecorder:
  """Orbit eval action: writes results JSON and prediction images per checkpoint.

  Never overwrites: a step evaluated again (e.g. with other post-processing)
  gets `results-<step>.<n>.json`, n = 1, 2, ... With `write_config` (an eval
  mode, whose config may differ from training's), the process's gin config goes
  beside each results file as `operative_config-<step>[.<n>].gin`.
  """

  def __init__(self, trainer: trainer_lib.PanopticTrainer, model_dir: str,
               info: dataset_info_lib.DatasetInfo, num_images: int = 2,
               write_config: bool = False):
    self._trainer = trainer
    self._model_dir = model_dir
    self._dir = os.path.join(model_dir, 'eval')
    self._info = info
    self._num_images = num_images
    self._write_config = write_config
    tf.io.gfile.makedirs(self._dir)
    self._writer = tf.summary.create_file_writer(os.path.join(self._dir, 'images'))

  def _new_name(self, step: int) -> str:
    """'<step>', or '<step>.<n>' with the first n whose results file is free."""
    name, n = str(step), 0
    while tf.io.gfile.exists(os.path.join(self._dir, f'results-{name}.json')):
      n += 1
      name = f'{step}.{n}'
    return name

  def __call__(self, output: Dict[str, float]) -> None:
    del output
    step = int(self._trainer.global_step.numpy())
    results = self._trainer.last_eval_results
    name = self._new_name(step)
    path = os.path.join(self._dir, f'results-{name}.json')
    if name != str(step):
      logging.info('Step %d was evaluated before (%s): this evaluation goes to %s.', step,
                   results_path(self._model_dir, step), path)
    if self._write_config:
      with tf.io.gfile.GFile(os.path.join(self._dir, f'operative_config-{name}.gin'),
                             'w') as f:
        f.write(gin.operative_config_str())
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump({'step': step, **_jsonable(results)}, f, indent=1)
    logging.info('step %d: PQ %.2f (95%% bootstrap interval %.2f-%.2f over %d images) '
                 'SQ %.2f RQ %.2f mIoU %.2f -> %s', step, results['pq'], results['pq_ci_low'],
                 results['pq_ci_high'], results['num_images'], results['sq'], results['rq'],
                 results['miou'], path)
    batch = self._trainer.last_eval_batch
    if batch is not None:
      with self._writer.as_default(step=step):
        for key in (common.PANOPTIC, common.PANOPTIC_PRED):
          images = np.stack([colors.colorize_panoptic(x, self._info)
                             for x in batch[key][:self._num_images]])
          tf.summary.image(key, images, max_outputs=self._num_images)


class SubmissionRecorder:
  """Writes each evaluation's predictions as `eval/submission-<step>/`.

  `add` is the trainer's prediction callback (per replica batch); calling the
  recorder, as an Orbit eval action after the evaluation, writes the JSON.
  Predictions are cropped to the image and, for images the eval crop shrank
  (`augment.fit_to_size`), resized back to the original size by nearest
  neighbour.
  """

  def __init__(self, model_dir: str, info: dataset_info_lib.DatasetInfo,
               submission_format: str):
    self._dir = os.path.join(model_dir, 'eval')
    self._info = info
    self._format = submission_format
    self._writer = None
    self.global_step = None

  def add(self, batch: Dict[str, np.ndarray]) -> None:
    if self._writer is None:
      output_dir = os.path.join(self._dir, f'submission-{int(self.global_step.numpy())}')
      self._writer = submission.make_writer(self._format, output_dir, self._info)
    for i, image_id in enumerate(batch[common.IMAGE_ID]):
      height, width = batch[common.VALID_SIZE][i]
      prediction = batch[common.PANOPTIC_PRED][i, :height, :width]
      original = tuple(batch[common.ORIGINAL_SIZE][i])
      if prediction.shape != original:
        prediction = tf.image.resize(prediction[..., None], original,
                                     method='nearest')[..., 0].numpy()
      self._writer.add(image_id, prediction)

  def __call__(self, output: Dict[str, float]) -> None:
    del output
    if self._writer is not None:
      path = self._writer.finalize()
      logging.info('Wrote the %s submission of step %d to %s.', self._format,
                   int(self.global_step.numpy()), path)
    self._writer = None


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  return value
