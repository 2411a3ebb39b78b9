"""README "Train on your own data", at demo size, on a data set that is not built in.

convert (class table from the JSON) -> train from another run's backbone (trained
for another class count) -> evaluate, writing a COCO submission -> export ->
predict --format=coco. Checks that the category ids (3, 5, 8, 17, 64, 90, 240,
1001; two things, six stuff, crowd segments) survive to both submissions, that
evaluation and the exported model predict the same pixels for the same files, and
that the official scoring of the submission gives evaluation's PQ / SQ / RQ.
"""
import json
import os

from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval
import gin
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import predict
from cmt_deeplab_tf import run_dir
from cmt_deeplab_tf.data import class_table
from cmt_deeplab_tf.data import convert_coco
from cmt_deeplab_tf.data import dataset_info
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import train_lib
from tests import run_dirs
from tests.data import custom_set

SIZE = 64  # Served padded to 65 = the eval crop: evaluation sees what serving sees.
IDS = (3, 5, 8, 17, 64, 90, 240, 1001)
BINDINGS = """
build_model.name = 'tiny'
build_model.num_clusters = 8
OptimizerConfig.warmup_steps = 1
PostProcessor.thing_class_threshold = 0.0
PostProcessor.stuff_class_threshold = 0.0
PostProcessor.thing_area_limit = 0
PostProcessor.stuff_area_limit = 0
PostProcessor.pixel_confidence_threshold = 0.0
PostProcessor.overlap_threshold = 0.0
"""


def _read_submission(json_path):
  with open(json_path) as f:
    data = json.load(f)
  png_dir = os.path.splitext(json_path)[0]
  pngs = {a['file_name']: np.asarray(Image.open(os.path.join(png_dir, a['file_name'])))
          for a in data['annotations']}
  return data, pngs


def _check_official_scores(gt_json, submission_json, results_json):
  """panopticapi's scoring (as shipped in cityscapesscripts) of the submission files
  against the ground-truth files equals the evaluation's results JSON."""
  with open(gt_json) as f:
    ground_truth = json.load(f)
  with open(submission_json) as f:
    by_id = {a['image_id']: a for a in json.load(f)['annotations']}
  categories = {c['id']: c for c in ground_truth['categories']}
  pairs = [(a, by_id[a['image_id']]) for a in ground_truth['annotations']]
  official = cs_eval.average_pq(cs_eval.pq_compute_single_core(
      0, pairs, os.path.splitext(gt_json)[0], os.path.splitext(submission_json)[0],
      categories), categories)
  with open(results_json) as f:
    results = json.load(f)
  for name, suffix in (('All', ''), ('Things', '_th'), ('Stuff', '_st')):
    assert results['n' + suffix] == official[name]['n']
    for metric in ('pq', 'sq', 'rq'):
      assert results[metric + suffix] == pytest.approx(100 * official[name][metric],
                                                       abs=1e-6), (name, metric)


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.slow
def test_train_on_your_own_data(tmp_path):
  root, records = str(tmp_path / 'my_data'), str(tmp_path / 'records')
  json_paths = custom_set.write(root, {'train': 6, 'val': 3}, size=SIZE, seed=0)
  for split, path in json_paths.items():
    convert_coco.convert_split(custom_set.NAME, split, os.path.join(root, split), path,
                               None, records, num_shards=1, num_workers=1)

  # A "pretrained" run for another class count (COCO's 133): only its backbone fits.
  pretrained = str(tmp_path / 'pretrained')
  os.makedirs(pretrained)
  run_dirs.write_untrained_run(pretrained, '', 133, 8,
                               info=dataset_info.get_dataset_info('coco'))
  gin.parse_config(BINDINGS)
  config = experiment.ExperimentConfig(
      train_file_pattern=os.path.join(records, 'train-*'),
      eval_file_pattern=os.path.join(records, 'val-*'), train_batch_size=2,
      eval_batch_size=2, train_crop_size=(65, 65), eval_crop_size=(65, 65),
      max_num_masks=8, train_steps=2, steps_per_loop=2, summary_interval=2,
      checkpoint_interval=2, seed=0, init_checkpoint=os.path.join(pretrained, 'ckpt-1'),
      init_checkpoint_modules='backbone')
  model_dir = str(tmp_path / 'run')
  strategy = tf.distribute.get_strategy()
  train_lib.run('train', model_dir, strategy, config)
  train_lib.run('eval', model_dir, strategy, config, submission_format='coco')
  info = class_table.read_class_table(os.path.join(model_dir, 'class_table.json'))
  assert info.source_ids == IDS and info.num_classes == 8

  export_dir = str(tmp_path / 'exported')
  export_lib.export(model_dir, export_dir)
  [predicted_json] = predict.predict_images(
      os.path.join(root, 'val'), str(tmp_path / 'predict'), saved_model=export_dir,
      output_format='coco').written

  eval_json = os.path.join(model_dir, 'eval', 'submission-2', 'panoptic_predictions.json')
  evaluated, eval_pngs = _read_submission(eval_json)
  predicted, predict_pngs = _read_submission(predicted_json)
  # The data set's own ids reach both submissions.
  assert [c['id'] for c in predicted['categories']] == list(IDS)
  used = {s['category_id'] for a in evaluated['annotations'] for s in a['segments_info']}
  assert used and used <= set(IDS)
  # Evaluation and the exported model see the same pixels and predict the same.
  key = lambda a: a['image_id']
  assert sorted(evaluated['annotations'], key=key) == sorted(predicted['annotations'],
                                                             key=key)
  assert eval_pngs.keys() == predict_pngs.keys()
  for name, png in eval_pngs.items():
    np.testing.assert_array_equal(png, predict_pngs[name])

  # The official scoring of those files gives evaluation's own numbers.
  with open(json_paths['val']) as f:
    assert any(s['iscrowd'] for a in json.load(f)['annotations'] for s in a['segments_info'])
  _check_official_scores(json_paths['val'], eval_json,
                         os.path.join(model_dir, 'eval', 'results-2.json'))

  # The class count is the run's: a data set with other classes is refused.
  gin.clear_config()
  gin.parse_config(BINDINGS)
  other = experiment.ExperimentConfig(
      dataset_name='synthetic', train_file_pattern=os.path.join(records, 'none-*'),
      train_steps=2)
  with pytest.raises(ValueError, match="trained for 'my_shapes' .*but the data are "
                                       "'synthetic'"):
    train_lib.run('train', model_dir, strategy, other)


# Slow: 30-140 s of training on 2 cores; the default suite keeps under 15 minutes.
@pytest.mark.slow
def test_eval_mode_predicts_what_predict_does(tfrecord_dir, synthetic_dir, tmp_path):
  """The same checkpoint through `train --mode=eval` and `predict`: the same files."""
  model_dir = str(tmp_path / 'run')
  gin.parse_config(BINDINGS)
  tf_keras.utils.set_random_seed(0)
  model = builder.build_model(num_classes=8)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  checkpoint = tf.train.Checkpoint(model=model, global_step=tf.Variable(1, dtype=tf.int64))
  tf.train.CheckpointManager(checkpoint, model_dir, 1).save(checkpoint_number=1)
  # As training would: the post-processing bindings are operative when the config is
  # recorded, so predict reads the thresholds the evaluation uses.
  info = dataset_info.get_dataset_info('synthetic')
  post_processing.PostProcessor(info.is_thing, info.label_divisor)
  run_dir.record_training_config(model_dir, 0)
  config = experiment.ExperimentConfig(
      eval_file_pattern=os.path.join(tfrecord_dir, 'val-*'), eval_batch_size=2,
      eval_crop_size=(97, 97), max_num_masks=16)
  train_lib.run('eval', model_dir, tf.distribute.get_strategy(), config,
                submission_format='coco')
  eval_json = os.path.join(model_dir, 'eval', 'submission-1', 'panoptic_predictions.json')
  evaluated, eval_pngs = _read_submission(eval_json)
  [predicted_json] = predict.predict_images(
      os.path.join(synthetic_dir, 'val'), str(tmp_path / 'predict'), model_dir=model_dir,
      output_format='coco').written
  predicted, predict_pngs = _read_submission(predicted_json)
  key = lambda a: a['image_id']
  assert sorted(evaluated['annotations'], key=key) == sorted(predicted['annotations'],
                                                             key=key)
  assert sum(len(a['segments_info']) for a in predicted['annotations']) > 4
  assert eval_pngs.keys() == predict_pngs.keys() and len(eval_pngs) == 4
  for name, png in eval_pngs.items():
    np.testing.assert_array_equal(png, predict_pngs[name])
  _check_official_scores(
      os.path.join(synthetic_dir, 'annotations', 'panoptic_val.json'), eval_json,
      os.path.join(model_dir, 'eval', 'results-1.json'))
