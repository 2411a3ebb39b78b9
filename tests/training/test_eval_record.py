"""The PQ bootstrap interval in every eval record: JSON, TensorBoard scalars, log line."""
import json
import logging
import types

import numpy as np
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.evaluation import panoptic_evaluator
from cmt_deeplab_tf.training import eval_actions
from cmt_deeplab_tf.training import trainer as trainer_lib
from tests.evaluation import random_panoptic

SYNTHETIC = dataset_info_lib.get_dataset_info('synthetic')


def _evaluated_trainer():
  """A stand-in trainer whose evaluator has seen five random images."""
  evaluator = panoptic_evaluator.PanopticEvaluator(SYNTHETIC)
  rng = np.random.default_rng(0)
  for _ in range(5):
    gt, pred = random_panoptic.random_pair(rng, SYNTHETIC)
    evaluator.update({common.PANOPTIC: gt, common.SEMANTIC: gt // SYNTHETIC.label_divisor},
                     {common.PANOPTIC_PRED: pred,
                      common.SEMANTIC_PRED: pred // SYNTHETIC.label_divisor})
  trainer = types.SimpleNamespace(evaluator=evaluator, global_step=tf.Variable(7),
                                  last_eval_batch=None)
  return trainer, evaluator.result()


def test_eval_end_scalars_carry_the_interval():
  trainer, expected = _evaluated_trainer()
  scalars = trainer_lib.PanopticTrainer.eval_end(trainer)
  assert (scalars['pq_ci_low'], scalars['pq_ci_high'], scalars['num_images']) == (
      expected['pq_ci_low'], expected['pq_ci_high'], 5)
  assert expected['pq_ci_low'] < expected['pq_ci_high']


def test_results_json_and_log_line_carry_the_interval(tmp_path, caplog):
  trainer, expected = _evaluated_trainer()
  trainer_lib.PanopticTrainer.eval_end(trainer)
  with caplog.at_level(logging.INFO):
    eval_actions.EvalRecorder(trainer, str(tmp_path), SYNTHETIC)({})
  with open(tmp_path / 'eval' / 'results-7.json') as f:
    results = json.load(f)
  assert (results['pq_ci_low'], results['pq_ci_high']) == (
      expected['pq_ci_low'], expected['pq_ci_high'])
  line = f"PQ {expected['pq']:.2f} (95% bootstrap interval {expected['pq_ci_low']:.2f}-" \
         f"{expected['pq_ci_high']:.2f} over 5 images)"
  assert any(line in record.getMessage() for record in caplog.records), caplog.text
