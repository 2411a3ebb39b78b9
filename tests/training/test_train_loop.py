"""The trainer's train loops: in Python (stoppable after any step) and in graph.

The in-graph loop's equality with the Python loop (bitwise, with a preemption
and a resume) is `test_repeatable.py`'s, in processes of their own.
"""
import numpy as np
import pytest
import tensorflow as tf

from cmt_deeplab_tf.analysis import cost
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import preemption
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import train_lib
from cmt_deeplab_tf.training import trainer as trainer_lib

NUM_CLASSES, NUM_CLUSTERS, SIZE = 5, 8, 33


# Slow: 30-140 s of training on 2 cores; the default suite keeps under 15 minutes.
@pytest.mark.slow
def test_in_graph_loop_runs_its_steps_then_honours_a_stop():
  model = builder.build_model('tiny', NUM_CLASSES, NUM_CLUSTERS)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  examples = cost.random_training_batch(SIZE, SIZE, NUM_CLASSES, NUM_CLUSTERS)
  trainer = trainer_lib.PanopticTrainer(
      strategy=tf.distribute.get_strategy(), model=model,
      loss_fn=panoptic_loss.PanopticLoss(num_classes=NUM_CLASSES, global_batch_size=1),
      optimizer_config=optimization.OptimizerConfig(train_steps=10, warmup_steps=1),
      post_processor=None, evaluator=None,
      train_dataset_fn=lambda _: tf.data.Dataset.from_tensor_slices(examples).batch(
          1).repeat(),
      in_graph_loop=True)
  losses = trainer.train(tf.constant(2))
  assert int(trainer.global_step.numpy()) == 2
  assert int(trainer.optimizer.iterations.numpy()) == 2
  # The sums made before the loop average both steps of every term.
  assert trainer.loss_steps.numpy() == 2.0
  assert {panoptic_loss.TOTAL, 'pq_style_class', 'mask_id'} <= set(losses)
  assert all(np.isfinite(value) for value in losses.values()), losses
  # A stop asked during a loop is honoured when all of its steps are done.
  trainer.stop_requested = lambda: True
  with pytest.raises(preemption.Preempted) as stopped:
    trainer.train(tf.constant(3))
  assert stopped.value.step == 5 and int(trainer.global_step.numpy()) == 5


@pytest.mark.parametrize('setting, expected', [(None, False), (True, True),
                                               (False, False)])
def test_in_graph_loop_default_is_off_outside_tpus(setting, expected):
  config = experiment.ExperimentConfig(in_graph_loop=setting)
  assert train_lib.uses_in_graph_loop(config, tf.distribute.get_strategy()) == expected
