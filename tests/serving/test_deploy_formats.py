"""SavedModel input types, TFLite and ONNX exports of the `tiny` model, from the CLI.

One SavedModel (all three input types) and one float32 TFLite file are exported
per module; every signature is run in a TensorFlow-only process and with
`saved_model_cli run`, and every format through `predict --model`, against the
default signature on the same images.
"""
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from cmt_deeplab_tf import export
from cmt_deeplab_tf.data import panoptic_format
from cmt_deeplab_tf.data import tfrecord_format
from cmt_deeplab_tf.serving import export_lib
from cmt_deeplab_tf.serving import onnx as onnx_export
from cmt_deeplab_tf.serving import runtimes
from cmt_deeplab_tf.serving import tflite
from tests import run_dirs
from tests.serving import test_export

INFO = test_export.INFO
INPUT_SIZE = (65, 97)
MAPS = (export_lib.PANOPTIC, export_lib.SEMANTIC, export_lib.INSTANCE,
        export_lib.SEGMENT_PANOPTIC_IDS, export_lib.SEGMENT_CLASSES)
# Two 47x90 images: JPEG (decoded in the graph by the project's decoder) and PNG.
IMAGES = np.random.default_rng(7).integers(0, 256, (2, 47, 90, 3), np.uint8)

# A TensorFlow-only process: runs each signature on encoded inputs.
SIGNATURES_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, work_dir = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    for name, key in [('image_tensor', 'images'), ('image_bytes', 'image_bytes'),
                      ('tf_example', 'tf_example'), ('serving_default', 'image_bytes')]:
      value = np.load(f'{work_dir}/{key}.npy', allow_pickle=True)
      outputs = loaded.signatures[name](**{key: tf.constant(value)})
      np.savez(f'{work_dir}/{name}.npz', **{k: v.numpy() for k, v in outputs.items()})
    assert not [m for m in sys.modules if m.startswith('cmt_deeplab_tf')]
""")


def _run(args):
  result = subprocess.run(args, cwd=test_export.REPO_ROOT, capture_output=True,
                          text=True, timeout=900, check=False,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _export_cli(model_dir, export_dir, *args):
  return _run([sys.executable, '-m', 'cmt_deeplab_tf.export', f'--model_dir={model_dir}',
               f'--export_dir={export_dir}', *args])


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(model_dir, export_dir): a run, its SavedModel (image_bytes first) and TFLite file."""
  model_dir = str(tmp_path_factory.mktemp('run'))
  run_dirs.write_untrained_run(model_dir, test_export.OPERATIVE_CONFIG,
                               INFO.num_classes, test_export.NUM_CLUSTERS)
  export_dir = str(tmp_path_factory.mktemp('export'))
  _export_cli(model_dir, export_dir, '--input_type=image_bytes',
              '--input_type=image_tensor', '--input_type=tf_example')
  _export_cli(model_dir, export_dir, '--format=tflite',
              f'--input_size={INPUT_SIZE[0]}x{INPUT_SIZE[1]}')
  return model_dir, export_dir


def _encoded_inputs(work_dir):
  """Writes images.npy, image_bytes.npy (JPEG, PNG) and tf_example.npy; returns
  the uint8 pixels each encoding decodes to (the JPEG's as PIL decodes it)."""
  jpeg = _jpeg(IMAGES[0])
  png = panoptic_format.encode_png(IMAGES[1])
  examples = [tf.train.Example(features=tf.train.Features(feature={
      tfrecord_format.IMAGE_ENCODED: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[data]))})).SerializeToString()
              for data in (jpeg, png)]
  with Image.open(_as_file(jpeg)) as image:
    pixels = np.stack([np.asarray(image), IMAGES[1]])
  np.save(work_dir / 'images.npy', pixels)
  np.save(work_dir / 'image_bytes.npy', np.array([jpeg, png], dtype=object),
          allow_pickle=True)
  np.save(work_dir / 'tf_example.npy', np.array(examples, dtype=object), allow_pickle=True)
  return pixels


def _jpeg(pixels):
  buffer = _as_file(b'')
  Image.fromarray(pixels).save(buffer, format='JPEG', quality=85)
  return buffer.getvalue()


def _as_file(data):
  return io.BytesIO(data)


def _assert_same_outputs(actual, expected, context):
  for key in MAPS:
    np.testing.assert_array_equal(actual[key], expected[key], err_msg=f'{context}: {key}')
  np.testing.assert_allclose(actual[export_lib.SEGMENT_SCORES],
                             expected[export_lib.SEGMENT_SCORES], atol=1e-6,
                             err_msg=context)


def test_each_input_type_gives_the_default_maps_in_plain_tensorflow(exported, tmp_path):
  _, export_dir = exported
  pixels = _encoded_inputs(tmp_path)
  _run([sys.executable, '-c', SIGNATURES_SCRIPT, export_dir, str(tmp_path)])
  expected = dict(np.load(tmp_path / 'image_tensor.npz'))
  assert len(np.unique(expected[export_lib.PANOPTIC])) >= 3  # Not vacuous.
  for name in ('image_bytes', 'tf_example', 'serving_default'):
    _assert_same_outputs(dict(np.load(tmp_path / f'{name}.npz')), expected, name)
  # And image_tensor on the decoded pixels is the checkpoint's own prediction.
  checkpoint = runtimes.CheckpointRuntime(exported[0])(pixels)
  _assert_same_outputs(checkpoint, expected, 'checkpoint')


@pytest.mark.parametrize('signature,key', [('image_tensor', 'images'),
                                           ('image_bytes', 'image_bytes'),
                                           ('tf_example', 'tf_example')])
def test_saved_model_cli_runs_each_signature(exported, tmp_path, signature, key):
  _, export_dir = exported
  _encoded_inputs(tmp_path)
  out = tmp_path / 'out'
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  _run([cli, 'run', '--dir', export_dir, '--tag_set', 'serve', '--signature_def',
        signature, '--inputs', f'{key}={tmp_path / f"{key}.npy"}', '--outdir', str(out)])
  expected = runtimes.SavedModelRuntime(export_dir)  # image_bytes, as exported first.
  reference = expected(np.load(tmp_path / 'images.npy'))
  actual = {name: np.load(out / f'{name}.npy') for name in export_lib.OUTPUT_NAMES}
  _assert_same_outputs(actual, reference, signature)


def test_unknown_input_type_and_bad_sizes_are_refused():
  with pytest.raises(ValueError, match='--input_type=jpeg is not one of'):
    export_lib.export('unused', 'unused', input_types=('jpeg',))
  with pytest.raises(ValueError, match='must name each input type once'):
    export_lib.export('unused', 'unused', input_types=('tf_example', 'tf_example'))
  with pytest.raises(ValueError, match=r'--input_size=\(64, 65\) must be HEIGHTxWIDTH'):
    export.parse_size('64x65')
  with pytest.raises(ValueError, match='--input_size=big is not HEIGHTxWIDTH'):
    export.parse_size('big')
  assert export.parse_size('641X129') == (641, 129)
  with pytest.raises(ValueError, match='larger than the model\'s fixed input size 65x97'):
    runtimes.pad_image(np.zeros((66, 10, 3), np.uint8), INPUT_SIZE)


def test_pad_image_is_bitwise_the_graph_padding():
  images = np.random.default_rng(8).integers(0, 256, (1, 40, 70, 3), np.uint8)
  expected = export_lib.pad_images(tf.constant(images), INPUT_SIZE).numpy()
  np.testing.assert_array_equal(runtimes.pad_image(images[0], INPUT_SIZE), expected)


def _check_network_runtime(path, export_dir):
  """A .tflite / .onnx file: metadata, and the SavedModel's outputs (float32)."""
  runtime = runtimes.load_runtime(path)
  assert runtime.info == INFO
  assert runtime.input_size == INPUT_SIZE
  images = np.random.default_rng(9).integers(0, 256, (2, 61, 80, 3), np.uint8)
  expected = runtimes.SavedModelRuntime(export_dir)(images)
  actual = runtime(images)
  assert actual[export_lib.PANOPTIC].shape == (2, 61, 80)
  # Float32 logits differ from TF's in the last bits; the maps agree (the
  # acceptance bar is 99.9% of pixels, these agree on all).
  agreement = (actual[export_lib.PANOPTIC] == expected[export_lib.PANOPTIC]).mean()
  assert agreement >= 0.999
  np.testing.assert_allclose(actual[export_lib.SEGMENT_SCORES],
                             expected[export_lib.SEGMENT_SCORES], atol=1e-4)


def test_tflite_metadata_and_outputs_match_the_saved_model(exported):
  _, export_dir = exported
  path = os.path.join(export_dir, 'model.tflite')
  with open(path, 'rb') as f:
    metadata = tflite.read_metadata(f.read(), path)
  assert metadata['class_table'] == INFO.to_json()
  assert metadata['input_size'] == list(INPUT_SIZE)
  assert {k: metadata['post_processing'][k] for k in test_export.POST_PROCESSING} == (
      test_export.POST_PROCESSING)
  assert metadata['post_processing']['method'] == 'pixelwise'  # The default.
  _check_network_runtime(path, export_dir)


def test_predict_cli_runs_each_format_to_the_same_files(exported, tmp_path):
  _, export_dir = exported
  images = tmp_path / 'images'
  images.mkdir()
  for i, pixels in enumerate(IMAGES):
    Image.fromarray(pixels).save(images / f'{i}.png')
  outputs = {}
  for name, model in [('saved_model', export_dir),
                      ('tflite', os.path.join(export_dir, 'model.tflite'))]:
    outputs[name] = tmp_path / name
    _run([sys.executable, '-m', 'cmt_deeplab_tf.predict', f'--model={model}',
          f'--image_dir={images}', f'--output_dir={outputs[name]}'])
  for i in range(len(IMAGES)):
    assert ((outputs['tflite'] / f'{i}_panoptic_ids.png').read_bytes() ==
            (outputs['saved_model'] / f'{i}_panoptic_ids.png').read_bytes())
    segments = [json.loads((outputs[name] / f'{i}_segments.json').read_text())
                for name in outputs]
    for tflite_segment, saved_model_segment in zip(*segments):
      assert tflite_segment.pop('score') == pytest.approx(saved_model_segment.pop('score'),
                                                          abs=1e-5)
      assert tflite_segment == saved_model_segment


def test_tflite_refuses_an_unknown_quantisation_and_names_a_file_without_metadata(
    tmp_path):
  with pytest.raises(ValueError, match='--quantize=int4 is not one of'):
    tflite.export('unused', 'unused', quantize='int4')
  path = tmp_path / 'other.tflite'
  converter = tf.lite.TFLiteConverter.from_concrete_functions([tf.function(
      lambda x: x + 1.0, input_signature=[tf.TensorSpec([1], tf.float32)]
  ).get_concrete_function()])
  path.write_bytes(converter.convert())
  with pytest.raises(ValueError, match=f'{path} has no cmt_deeplab_tf metadata'):
    runtimes.load_runtime(str(path))


@pytest.mark.slow
@pytest.mark.parametrize('quantize', [tflite.FLOAT16, tflite.DYNAMIC_RANGE])
def test_quantised_tflite_converts_and_predicts(exported, quantize):
  model_dir, export_dir = exported
  _export_cli(model_dir, export_dir, '--format=tflite', f'--quantize={quantize}',
              f'--input_size={INPUT_SIZE[0]}x{INPUT_SIZE[1]}')
  path = os.path.join(export_dir, f'model_{quantize}.tflite')
  runtime = runtimes.load_runtime(path)
  outputs = runtime(IMAGES[:1, :40, :40])
  assert outputs[export_lib.PANOPTIC].shape == (1, 40, 40)
  assert os.path.getsize(path) < os.path.getsize(os.path.join(export_dir, 'model.tflite'))


@pytest.mark.slow
def test_onnx_metadata_and_outputs_match_the_saved_model(exported):
  model_dir, export_dir = exported
  _export_cli(model_dir, export_dir, '--format=onnx',
              f'--input_size={INPUT_SIZE[0]}x{INPUT_SIZE[1]}')
  path = os.path.join(export_dir, 'model.onnx')
  import onnx  # pylint: disable=g-import-not-at-top
  model = onnx.load(path)
  assert model.opset_import[0].version == onnx_export.OPSET
  metadata = json.loads({p.key: p.value for p in model.metadata_props}[
      onnx_export.METADATA_KEY])
  assert metadata['class_table'] == INFO.to_json()
  assert not [n for n in model.graph.node if n.domain not in ('', 'ai.onnx')]
  _check_network_runtime(path, export_dir)
