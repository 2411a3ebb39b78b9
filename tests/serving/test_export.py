"""SavedModel export and the predict CLI, on the `tiny` model of a fake training run.

The exported SavedModel is loaded in a fresh Python process that imports only
TensorFlow and NumPy, and must give exactly the maps of the Keras model +
PostProcessor run here on inputs padded by hand.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import gin
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from cmt_deeplab_tf import common
from cmt_deeplab_tf import predict
from cmt_deeplab_tf.data import dataset_info as dataset_info_lib
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.ops import colors
from cmt_deeplab_tf.ops import post_processing
from cmt_deeplab_tf.serving import export_lib
from tests import run_dirs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFO = dataset_info_lib.get_dataset_info('synthetic')
NUM_CLUSTERS = 8
# A randomly initialised model is never confident: with the default thresholds
# every pixel would be void. Zero thresholds and area limits keep all segments.
POST_PROCESSING = dict(thing_class_threshold=0.0, stuff_class_threshold=0.0,
                       pixel_confidence_threshold=0.0, thing_area_limit=0,
                       stuff_area_limit=0)
OPERATIVE_CONFIG = f"""
build_model.name = 'tiny'
build_model.num_clusters = {NUM_CLUSTERS}
ExperimentConfig.dataset_name = 'synthetic'
""" + ''.join(f'PostProcessor.{k} = {v}\n' for k, v in POST_PROCESSING.items())
# Input size -> the 32k + 1 size the model must see, worked out by hand.
PADDED_SIZES = {(97, 130): (97, 161), (129, 129): (129, 129)}

# Runs in a fresh interpreter: plain TensorFlow, no project import.
FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, work_dir, *names = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    serve = loaded.signatures['serving_default']
    for name in names:
      outputs = serve(images=tf.constant(np.load(f'{work_dir}/{name}.npy')))
      np.savez(f'{work_dir}/{name}_out.npz', **{k: v.numpy() for k, v in outputs.items()})
    assert not [m for m in sys.modules if m.startswith('cmt_deeplab_tf')]
    with open(f'{work_dir}/metadata.json', 'w') as f:
      json.dump({'dataset_name': loaded.dataset_name.numpy().decode(),
                 'class_names': [c.decode() for c in loaded.class_names.numpy()],
                 'is_thing': loaded.is_thing.numpy().tolist(),
                 'label_divisor': int(loaded.label_divisor.numpy()),
                 'category_ids': loaded.category_ids.numpy().tolist(),
                 'ignore_label': int(loaded.ignore_label.numpy()),
                 'inputs': {k: str(v) for k, v in
                            serve.structured_input_signature[1].items()}}, f)
""")


def _run(args, cwd):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """(model_dir, model): a run dir with operative config and a checkpoint."""
  model_dir = str(tmp_path_factory.mktemp('run'))
  model = run_dirs.write_untrained_run(  # The global step is state the export must skip.
      model_dir, OPERATIVE_CONFIG, INFO.num_classes, NUM_CLUSTERS, step=3,
      global_step=tf.Variable(3, dtype=tf.int64))
  return model_dir, model


def _pad_by_hand(images, padded_size):
  """uint8 [B, H, W, 3] -> float32 [B, H', W', 3], mean-pixel padding, in [-1, 1]."""
  padded = np.full((images.shape[0], *padded_size, 3), 127.5, np.float32)
  padded[:, :images.shape[1], :images.shape[2]] = images
  return padded / 127.5 - 1.0


def _keras_reference(model, images):
  """Keras model + PostProcessor on the hand-padded images, maps at the input size."""
  padded = _pad_by_hand(images, PADDED_SIZES[images.shape[1:3]])
  outputs = model(tf.constant(padded), training=False)
  post = post_processing.PostProcessor(INFO.is_thing, INFO.label_divisor,
                                       **POST_PROCESSING)
  return {key: value.numpy() for key, value in post(outputs, images.shape[1:3]).items()}


def test_padded_size_is_next_32k_plus_1():
  sizes = [1, 2, 33, 34, 97, 129, 130, 641, 642, 1025]
  expected = [1, 33, 33, 65, 97, 129, 161, 641, 673, 1025]
  assert [export_lib.padded_size(s) for s in sizes] == expected
  assert export_lib.padded_size(tf.constant(130)).numpy() == 161


def test_pad_images_pads_with_the_mean_pixel_at_bottom_right():
  images = np.random.default_rng(0).integers(0, 256, (2, 34, 97, 3), np.uint8)
  padded = export_lib.pad_images(tf.constant(images)).numpy()
  np.testing.assert_allclose(padded, _pad_by_hand(images, (65, 97)), atol=1e-6)
  assert not padded[:, 34:].any()


def test_upsampling_to_the_input_size_equals_cropping_the_padded_size():
  # Why the serving function post-processes at the input size directly.
  mask_logits = tf.random.stateless_normal([1, 25, 41, 3], seed=[0, 1])
  padded = post_processing.upsample_mask_logits(mask_logits, (97, 161))
  direct = post_processing.upsample_mask_logits(mask_logits, (97, 130))
  np.testing.assert_array_equal(direct.numpy(), padded.numpy()[:, :97, :130])


def _check_fresh_process_matches_keras(model, export_dir, tmp_path):
  """Runs the SavedModel with plain TF on two sizes; compares with the Keras model."""
  rng = np.random.default_rng(1)
  inputs = {'batch2_97x130': rng.integers(0, 256, (2, 97, 130, 3), np.uint8),
            'batch1_129x129': rng.integers(0, 256, (1, 129, 129, 3), np.uint8)}
  for name, images in inputs.items():
    np.save(tmp_path / f'{name}.npy', images)
  _run([sys.executable, '-c', FRESH_PROCESS_SCRIPT, export_dir, str(tmp_path),
        *inputs], cwd=str(tmp_path))

  for name, images in inputs.items():
    exported = dict(np.load(tmp_path / f'{name}_out.npz'))
    expected = _keras_reference(model, images)
    assert sorted(exported) == sorted(export_lib.OUTPUT_NAMES)
    batch, height, width = images.shape[:3]
    for key, expected_key in [(export_lib.PANOPTIC, common.PANOPTIC_PRED),
                              (export_lib.SEMANTIC, common.SEMANTIC_PRED),
                              (export_lib.INSTANCE, common.INSTANCE_PRED)]:
      assert exported[key].shape == (batch, height, width)
      assert exported[key].dtype == np.int32
      np.testing.assert_array_equal(exported[key], expected[expected_key])
    ids = expected[common.SEGMENT_PANOPTIC_IDS]
    np.testing.assert_array_equal(exported[export_lib.SEGMENT_PANOPTIC_IDS], ids)
    np.testing.assert_array_equal(exported[export_lib.SEGMENT_CLASSES],
                                  np.where(ids >= 0, ids // INFO.label_divisor, -1))
    np.testing.assert_allclose(exported[export_lib.SEGMENT_SCORES],
                               expected[common.SEGMENT_SCORES], atol=1e-5)
    # The comparison is not vacuous: several segments, things among them.
    assert len(np.unique(exported[export_lib.PANOPTIC])) >= 3
    assert exported[export_lib.INSTANCE].max() >= 1

  with open(tmp_path / 'metadata.json') as f:
    metadata = json.load(f)
  assert metadata['dataset_name'] == 'synthetic'
  assert metadata['class_names'] == list(INFO.class_names)
  assert metadata['is_thing'] == list(INFO.is_thing)
  assert metadata['label_divisor'] == INFO.label_divisor
  assert metadata['category_ids'] == list(INFO.source_ids)
  assert metadata['ignore_label'] == INFO.ignore_label
  assert 'shape=(None, None, None, 3)' in metadata['inputs']['images']
  assert 'dtype=tf.uint8' in metadata['inputs']['images']


@pytest.fixture
def image_dir(tmp_path):
  """Two small images of different sizes and formats, and a file to skip."""
  path = tmp_path / 'images'
  path.mkdir()
  rng = np.random.default_rng(2)
  Image.fromarray(rng.integers(0, 256, (40, 56, 3), np.uint8)).save(path / 'a.png')
  Image.fromarray(rng.integers(0, 256, (33, 47), np.uint8)).save(path / 'b.jpg')
  (path / 'notes.txt').write_text('not an image')
  return str(path)


def _read_png(path):
  with Image.open(path) as image:
    return np.asarray(image)


def _check_predict_outputs(model_dir, export_dir, image_dir, tmp_path):
  """predict from the SavedModel and from the run dir: the same, expected files."""
  from_saved_model = tmp_path / 'from_saved_model'
  from_model_dir = tmp_path / 'from_model_dir'
  written = predict.predict_images(image_dir, str(from_saved_model),
                                   saved_model=export_dir).written
  predict.predict_images(image_dir, str(from_model_dir), model_dir=model_dir)

  expected_files = sorted(f'{stem}_{kind}' for stem in ('a', 'b') for kind in (
      'panoptic.png', 'overlay.png', 'panoptic_ids.png', 'segments.json'))
  assert sorted(os.listdir(from_saved_model)) == expected_files
  assert sorted(os.path.basename(p) for p in written) == expected_files
  for stem, file_name, size in [('a', 'a.png', (40, 56)), ('b', 'b.jpg', (33, 47))]:
    # The checkpoint and its SavedModel predict the same thing.
    for suffix in ('_panoptic_ids.png', '_segments.json'):
      assert ((from_saved_model / f'{stem}{suffix}').read_bytes() ==
              (from_model_dir / f'{stem}{suffix}').read_bytes())
    panoptic = panoptic_format.rgb_to_id(
        _read_png(from_saved_model / f'{stem}_panoptic_ids.png'))
    assert panoptic.shape == size
    colored = _read_png(from_saved_model / f'{stem}_panoptic.png')
    np.testing.assert_array_equal(colored, colors.colorize_panoptic(panoptic, INFO))
    image = predict.read_image(os.path.join(image_dir, file_name))
    np.testing.assert_array_equal(_read_png(from_saved_model / f'{stem}_overlay.png'),
                                  colors.overlay(image, colored))
    segments = json.loads((from_saved_model / f'{stem}_segments.json').read_text())
    ids, areas = np.unique(panoptic, return_counts=True)
    segment = ids != common.IGNORE_LABEL * INFO.label_divisor
    assert [s['panoptic_id'] for s in segments] == ids[segment].tolist()
    assert [s['area'] for s in segments] == areas[segment].tolist()
    for segment in segments:
      class_id = segment['panoptic_id'] // INFO.label_divisor
      assert segment['class_name'] == INFO.class_names[class_id]
      assert segment['is_thing'] == INFO.is_thing[class_id]
      assert 0.0 < segment['score'] <= 1.0


# One test for the costly chain, so that parallel workers do not each export.
def test_export_cli_serves_any_size_in_fresh_process_and_predicts(trained_run, image_dir,
                                                                  tmp_path):
  model_dir, model = trained_run
  export_dir = str(tmp_path / 'saved_model')
  _run([sys.executable, '-m', 'cmt_deeplab_tf.export', f'--model_dir={model_dir}',
        f'--export_dir={export_dir}'], cwd=REPO_ROOT)
  _check_fresh_process_matches_keras(model, export_dir, tmp_path)
  _check_predict_outputs(model_dir, export_dir, image_dir, tmp_path)
  _check_predict_submission_cli(export_dir, image_dir, tmp_path)


def _check_predict_submission_cli(export_dir, image_dir, tmp_path):
  """predict --format=cityscapes: the visual outputs' segments, with category ids."""
  out = tmp_path / 'submission'
  _run([sys.executable, '-m', 'cmt_deeplab_tf.predict', f'--saved_model={export_dir}',
        f'--image_dir={image_dir}', f'--output_dir={out}', '--format=cityscapes'],
       cwd=REPO_ROOT)
  data = json.loads((out / 'cityscapes_panoptic_val.json').read_text())
  assert [c['id'] for c in data['categories']] == list(INFO.source_ids)
  assert sorted(a['image_id'] for a in data['annotations']) == ['a', 'b']
  for annotation in data['annotations']:
    ids = panoptic_format.rgb_to_id(
        _read_png(out / 'cityscapes_panoptic_val' / annotation['file_name']))
    panoptic = panoptic_format.rgb_to_id(
        _read_png(tmp_path / 'from_saved_model' / f"{annotation['image_id']}_panoptic_ids.png"))
    void = common.IGNORE_LABEL * INFO.label_divisor
    assert len(annotation['segments_info']) == len(set(np.unique(panoptic)) - {void}) > 0
    for segment in annotation['segments_info']:
      [panoptic_id] = np.unique(panoptic[ids == segment['id']])
      assert INFO.source_ids[panoptic_id // INFO.label_divisor] == segment['category_id']
      assert segment['area'] == int((panoptic == panoptic_id).sum())


def test_load_model_errors_name_the_path(trained_run, tmp_path):
  model_dir = trained_run[0]
  missing = str(tmp_path / 'missing')
  with pytest.raises(ValueError, match=re.escape(f'--model_dir={missing} does not exist')):
    export_lib.load_model_from_model_dir(missing)
  with pytest.raises(ValueError, match=re.escape(f'--model_dir={tmp_path} holds no checkpoint')):
    export_lib.load_model_from_model_dir(str(tmp_path))
  bogus = os.path.join(model_dir, 'ckpt-99')
  with pytest.raises(ValueError, match=re.escape(f'--checkpoint={bogus} is not a checkpoint')):
    export_lib.load_model_from_model_dir(model_dir, checkpoint=bogus)
  no_config = tmp_path / 'no_config'
  shutil.copytree(model_dir, no_config)
  os.remove(no_config / 'operative_config.gin')
  with pytest.raises(ValueError, match='has no operative_config.gin'):
    export_lib.load_model_from_model_dir(str(no_config))


def test_checkpoint_of_another_architecture_is_refused(trained_run, tmp_path):
  other = tmp_path / 'other'
  shutil.copytree(trained_run[0], other)
  (other / 'operative_config.gin').write_text(
      OPERATIVE_CONFIG.replace(f'num_clusters = {NUM_CLUSTERS}', 'num_clusters = 12'))
  with pytest.raises(ValueError, match='ckpt-3 does not match the model'):
    export_lib.load_model_from_model_dir(str(other))


def test_predict_errors_name_the_flag(image_dir, tmp_path):
  output_dir = str(tmp_path / 'out')
  with pytest.raises(ValueError, match='exactly one of --model .* and --model_dir'):
    predict.predict_images(image_dir, output_dir)
  with pytest.raises(ValueError, match='exactly one of --model .* and --model_dir'):
    predict.predict_images(image_dir, output_dir, saved_model='a', model_dir='b')
  with pytest.raises(ValueError, match='--model or its alias --saved_model, not both'):
    predict.predict_images(image_dir, output_dir, model='a', saved_model='a')
  with pytest.raises(ValueError, match=re.escape(f'--model={tmp_path} holds no SavedModel')):
    predict.predict_images(image_dir, output_dir, saved_model=str(tmp_path))
  with pytest.raises(ValueError, match=re.escape(f'--model={tmp_path}/x.onnx does not exist')):
    predict.predict_images(image_dir, output_dir, model=str(tmp_path / 'x.onnx'))
  (tmp_path / 'weights.h5').write_bytes(b'')
  with pytest.raises(ValueError, match='is neither a SavedModel folder nor a .tflite'):
    predict.predict_images(image_dir, output_dir, model=str(tmp_path / 'weights.h5'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(ValueError, match=re.escape(f'--image_dir={empty} holds no image files')):
    predict.predict_images(str(empty), output_dir, saved_model=str(tmp_path))
  with pytest.raises(ValueError, match='--image_dir=.*missing is not a directory'):
    predict.predict_images(str(tmp_path / 'missing'), output_dir, saved_model='a')
  with pytest.raises(ValueError, match='--dataset=coco has 133 classes'):
    predict.override_dataset_info(INFO, 'coco')
  assert predict.override_dataset_info(INFO, None) == INFO
