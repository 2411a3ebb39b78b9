"""Builds the DeepLab2 fixtures of `tests/checkpoints/` with DeepLab2's own code.

For each of the published DeepLab2 checkpoint layouts this project imports
(MaX-DeepLab-S on COCO, its ImageNet backbone, the GeLU Axial-ResNet-50, the
ResNet-50, kMaX-DeepLab with ResNet-50 and with Axial-ResNet-50 on COCO), the
script builds DeepLab2's model at a reduced width, gives every
variable random values (batch-norm gamma, beta, moving mean and variance
included, so no layer is an identity), and writes into
`<output_dir>/<layout>/`:

- `ckpt-1.index`, `ckpt-1.data-00000-of-00001`: a DeepLab2 object-based
  checkpoint keyed as DeepLab2 keys its published ones
  (`tf.train.Checkpoint(global_step=..., **model.checkpoint_items)`);
- `reference.npz`: `image` (uint8 `[1, H, W, 3]`), `encoder/<endpoint>` for
  every endpoint DeepLab2's encoder returns at inference, for MaX-DeepLab-S
  `decoder/<key>` for every output of its decoder, and for kMaX-DeepLab
  `kmax/<key>` for every output of its predictor (inference mode) and
  `kmax/layer<i>/<key>` for every output of the predictor of k-means layer i;
- `config.json`: the widths, input size and DeepLab2 options used.

It also writes `full_size_variables.json` (and `full_size_kmax_variables.json`
for kMaX-DeepLab): every checkpoint key with its shape of the layouts at the
published widths (DeepLab2's models built on a
small input; no weights are written anywhere).

Getting DeepLab2 (source only; its protos compiled with grpcio-tools):

    git clone https://github.com/google-research/deeplab2.git dl2/deeplab2
    python -m venv dl2/ptool && dl2/ptool/bin/pip install grpcio-tools
    (cd dl2 && ptool/bin/python -m grpc_tools.protoc -I. --python_out=. \
        deeplab2/*.proto)

then, with this project's environment (TensorFlow 2.20, tf_keras):

    TF_USE_LEGACY_KERAS=1 python scripts/make_deeplab2_fixtures.py \
        --deeplab2_path dl2 --output_dir tests/fixtures/deeplab2
"""
import json
import os
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

# DeepLab2 uses TensorFlow's Keras alias, which must be Keras 2 (tf_keras).
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

_DEEPLAB2_PATH = flags.DEFINE_string(
    'deeplab2_path', None,
    'Folder holding the `deeplab2` package with compiled protos.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', 'tests/fixtures/deeplab2', 'Where the fixtures go.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights and images: the same '
                             'seed and DeepLab2 give the same fixtures.')

# Layout folder names (as `tests/checkpoints/fixtures.py` names them).
MAX_DEEPLAB_S_COCO = 'max_deeplab_s_coco'
MAX_DEEPLAB_S_BACKBONE = 'max_deeplab_s_backbone_imagenet'
AXIAL_RESNET50_GELU = 'axial_resnet50_gelu_imagenet'
RESNET50 = 'resnet50_imagenet'
# kMaX-DeepLab on COCO: `kmax_resnet50_coco_train` and
# `kmax_maxs_gelu_coco_train` (Axial-ResNet-50, GeLU) in DeepLab2's model zoo.
KMAX_RESNET50_COCO = 'kmax_resnet50_coco'
KMAX_AXIAL_RESNET50_COCO = 'kmax_axial_resnet50_coco'
KMAX_LAYOUTS = (KMAX_RESNET50_COCO, KMAX_AXIAL_RESNET50_COCO)
LAYOUTS = (AXIAL_RESNET50_GELU, MAX_DEEPLAB_S_BACKBONE, MAX_DEEPLAB_S_COCO,
           RESNET50) + KMAX_LAYOUTS
# The full-size key listings, by file (the kMaX ones in a file of their own).
FULL_SIZE_FILES = {
    'full_size_variables.json': LAYOUTS[:4],
    'full_size_kmax_variables.json': KMAX_LAYOUTS,
}

# Every width of the small fixtures is the published one times WIDTH. The
# dual-path layers' 128 filters, which DeepLab2's width multipliers leave alone,
# are scaled by TRANSFORMER_EXPANSION (DeepLab2's `base_transformer_expansion`,
# our `build_model.transformer_expansion`).
WIDTH = 1 / 32
TRANSFORMER_EXPANSION = 1 / 4
KERNEL_SCALE = 0.5
MAX_DEEPLAB_S_INPUT = 49
BACKBONE_INPUT = 33
# Published MaX-DeepLab-S widths (DeepLab2's defaults and COCO textproto).
_MEMORY = 256
_GLOBAL_FFN = 256
_DUAL_PATH_FFN = 2048
_HEAD = 256
_PIXEL_SPACE_OUTPUT = 128
_LOW_LEVEL = {'res3': 64, 'res2': 32}
_COCO_CLASSES = 134  # 133 classes + void.
_CONFIG = 'configs/coco/max_deeplab/max_deeplab_s_os16_res641_400k.textproto'
_FULL_SIZE_INPUT = 33
_KMAX_CONFIGS = {
    KMAX_RESNET50_COCO: 'configs/coco/kmax_deeplab/kmax_meta_r50_os32.textproto',
    KMAX_AXIAL_RESNET50_COCO:
        'configs/coco/kmax_deeplab/kmax_meta_axial_r50_os32.textproto',
}
# kMaX widths DeepLab2 hard-codes: cluster centers and their class / mask
# projections (256), the k-means layers' feed-forward network (2048).
_KMAX_CENTERS = 256
_KMAX_INPUT = 49  # Strides 32, 16, 8, 4: 2, 4, 7, 13 pixels.
# The k-means layers' 128 filters at 1/8 (16: 8 heads of 2 channels) keep the
# fixtures under ~1 MB.
KMAX_TRANSFORMER_EXPANSION = 1 / 8
# kMaX's argmax assignment is discontinuous: a fixture whose top two mask
# logits of a pixel are closer than this (relative to the logits' scale)
# could flip under round-off, so the generator refuses it.
_MIN_ASSIGNMENT_MARGIN = 1e-5
# The tests compare with 1e-4 of each output's scale: outputs may move by at
# most a tenth of that for round-off-sized (1e-6) input noise.
_MAX_SENSITIVITY = 1e-5


def _import_deeplab2(path):
  """Imports DeepLab2's modules from `path` (the folder holding `deeplab2/`)."""
  if not os.path.isfile(os.path.join(path, 'deeplab2', 'config_pb2.py')):
    raise ValueError(
        f'--deeplab2_path={path} has no deeplab2/config_pb2.py: give the folder '
        'holding the deeplab2 package, with its protos compiled (see the '
        'module docstring).')
  sys.path.insert(0, os.path.abspath(path))
  # pylint: disable=g-import-not-at-top
  from deeplab2 import config_pb2
  from deeplab2.data import dataset
  from deeplab2.model import deeplab
  from deeplab2.model import kmax_deeplab
  from deeplab2.model.encoder import axial_resnet_instances
  from deeplab2.model.layers import convolutions
  from deeplab2.model.pixel_decoder import kmax as kmax_pixel_decoder
  from deeplab2.model.pixel_encoder import axial_resnet
  from deeplab2.model.transformer_decoder import kmax as kmax_transformer
  from google.protobuf import text_format
  # pylint: enable=g-import-not-at-top
  return dict(config_pb2=config_pb2, dataset=dataset, deeplab=deeplab,
              instances=axial_resnet_instances, pixel_encoder=axial_resnet,
              text_format=text_format, kmax_deeplab=kmax_deeplab,
              convolutions=convolutions, kmax_pixel_decoder=kmax_pixel_decoder,
              kmax_transformer=kmax_transformer)


def _parse_config(dl2, path, config_file, width, input_size):
  """A COCO textproto with its head widths times `width` and a square crop."""
  with open(os.path.join(path, 'deeplab2', config_file)) as f:
    config = dl2['text_format'].Parse(f.read(), dl2['config_pb2'].ExperimentOptions())
  model_options = config.model_options
  model_options.decoder.decoder_channels = int(_HEAD * width)
  model_options.decoder.aspp_channels = int(_HEAD * width)
  heads = model_options.max_deeplab
  heads.pixel_space_head.head_channels = int(_HEAD * width)
  heads.pixel_space_head.output_channels = int(_PIXEL_SPACE_OUTPUT * width)
  heads.auxiliary_semantic_head.head_channels = int(_HEAD * width)
  for low_level in heads.auxiliary_low_level:
    low_level.channels_project = int(_LOW_LEVEL[low_level.feature_key] * width)
  config.trainer_options.solver_options.use_sync_batchnorm = False
  del config.train_dataset_options.crop_size[:]
  config.train_dataset_options.crop_size.extend([input_size, input_size])
  return config


class _Patches:
  """Sets module attributes for a `with` block and restores them after."""

  def __init__(self, *patches):
    self._patches = patches  # (module, attribute, value)
    self._saved = []

  def __enter__(self):
    for module, attribute, value in self._patches:
      self._saved.append((module, attribute, getattr(module, attribute)))
      setattr(module, attribute, value)

  def __exit__(self, *exc):
    for module, attribute, value in reversed(self._saved):
      setattr(module, attribute, value)


def _kmax_deeplab(dl2, path, layout, width, expansion, input_size):
  """DeepLab2's COCO kMaX-DeepLab: (model, checkpoint items, options).

  Every width is the published one times `width`: the textproto's head
  widths, the encoder's (its width multipliers), the pixel decoder's stage
  widths, the cluster centers and their projections, the k-means layers' FFN;
  the k-means layers' 128 filters are scaled by `expansion`. DeepLab2 exposes
  no option for the widths of its kMaX decoders, so they are set by wrapping
  its constructors while the model is built.
  """
  import functools  # pylint: disable=g-import-not-at-top
  config = _parse_config(dl2, path, _KMAX_CONFIGS[layout], width, input_size)
  encoder_module = dl2['pixel_encoder']
  encoder_name = config.model_options.backbone.name.replace('kmax_', '')
  pixel_decoder = dl2['kmax_pixel_decoder'].KMaXPixelDecoder
  transformer = dl2['kmax_transformer']
  block = transformer.transformer_decoder_block
  centers = int(_KMAX_CENTERS * width)
  dual_path = dict(block.keywords['dual_path_transformer_layer_config'],
                   feed_forward_network_channels=int(_DUAL_PATH_FFN * width))
  conv1d = dl2['convolutions'].Conv1D

  def narrow_pixel_decoder(name, norm_layer, dims, num_blocks, block_type):
    return pixel_decoder(name, norm_layer, [int(d * width) for d in dims],
                         num_blocks, block_type)

  class NarrowTransformerDecoder(transformer.KMaXTransformerDecoder):
    """Cluster centers and their two projections `centers` wide."""

    def __init__(self, *args, norm_layer, num_mask_slots, **kwargs):
      super().__init__(*args, norm_layer=norm_layer,
                       num_mask_slots=num_mask_slots, **kwargs)
      self._cluster_centers = self.add_weight(
          name='cluster_centers', shape=(1, num_mask_slots, centers),
          initializer='truncated_normal', trainable=True)
      for name in ('class_embedding_projection', 'mask_embedding_projection'):
        setattr(self, f'_{name}', conv1d(
            centers, name, use_bias=False, use_bn=True, bn_layer=norm_layer,
            activation='gelu'))

  with _Patches(
      (encoder_module, encoder_name, functools.partial(
          getattr(encoder_module, encoder_name), width_multiplier=width,
          stem_width_multiplier=width)),
      (dl2['kmax_pixel_decoder'], 'KMaXPixelDecoder', narrow_pixel_decoder),
      (transformer, 'transformer_decoder_block', functools.partial(
          block, transformer_expansion=expansion,
          dual_path_transformer_layer_config=dual_path)),
      (transformer, 'KMaXTransformerDecoder', NarrowTransformerDecoder)):
    model = dl2['kmax_deeplab'].KMaXDeepLab(
        config, dl2['dataset'].MAP_NAME_TO_DATASET_INFO['coco_panoptic'])
  options = dict(
      deeplab2_config=_KMAX_CONFIGS[layout], input_size=[input_size, input_size],
      model_options=dl2['text_format'].MessageToString(config.model_options),
      width=width, transformer_expansion=expansion,
      input_normalisation='image / 127.5 - 1 (done by KMaXDeepLab.call before '
                          'the encoder)')
  return model, model.checkpoint_items, options


def _max_deeplab_s(dl2, path, width, expansion, input_size):
  """DeepLab2's COCO MaX-DeepLab-S: (model, checkpoint items, options).

  Every width of its COCO textproto and of its `MaXDeepLabS` instance is the
  published one times `width`; the dual-path layers' 128 filters are scaled by
  `expansion`.
  """
  config = _parse_config(dl2, path, _CONFIG, width, input_size)
  model_options = config.model_options
  model_options.backbone.stem_width_multiplier = width
  model_options.backbone.backbone_width_multiplier = width
  # Widths DeepLab2's config proto does not expose: its MaX-DeepLab-S
  # instance's defaults, scaled alike.
  instance_config = {
      'memory_channels': int(_MEMORY * width),
      'global_feed_forward_network_channels': int(_GLOBAL_FFN * width),
      'base_transformer_expansion': expansion,
      'block_group_config': {'dual_path_transformer_layer_config': {
          'feed_forward_network_channels': int(_DUAL_PATH_FFN * width)}},
  }
  instance = dl2['instances'].MaXDeepLabS
  published = instance.__dict__['_get_config']
  instance._get_config = classmethod(lambda cls: instance_config)  # pylint: disable=protected-access
  try:
    model = dl2['deeplab'].DeepLab(
        config, dl2['dataset'].MAP_NAME_TO_DATASET_INFO['coco_panoptic'])
  finally:
    instance._get_config = published  # pylint: disable=protected-access
  options = dict(
      deeplab2_config=_CONFIG, input_size=[input_size, input_size],
      model_options=dl2['text_format'].MessageToString(model_options),
      max_deeplab_s_instance_config=instance_config,
      input_normalisation='image / 127.5 - 1 (done by DeepLab.call before '
                          'the encoder)')
  return model, model.checkpoint_items, options


_BACKBONES = {
    # Layout -> (DeepLab2 constructor name, keyword arguments).
    MAX_DEEPLAB_S_BACKBONE: ('max_deeplab_s_backbone', dict(output_stride=16)),
    AXIAL_RESNET50_GELU: ('axial_resnet50', {}),
    RESNET50: ('resnet50', {}),
}


def _backbone(dl2, layout, width):
  """DeepLab2's encoder of a backbone layout at `width`."""
  name, kwargs = _BACKBONES[layout]
  widths = dict(width_multiplier=width, stem_width_multiplier=width)
  if layout == MAX_DEEPLAB_S_BACKBONE:
    encoder = dl2['instances'].get_model(name, **widths, **kwargs)
  else:
    encoder = getattr(dl2['pixel_encoder'], name)(name=name, **widths)
  return encoder, dict(encoder=encoder), dict(
      deeplab2_model=name, output_stride=encoder._output_stride,  # pylint: disable=protected-access
      input_normalisation='image / 127.5 - 1', **widths)


def build(dl2, path, layout, width, expansion, input_size):
  """Builds a layout's DeepLab2 model on a square input: (call, items, options).

  `width` and `expansion` as in `_max_deeplab_s` (the backbones take `width`).

  `call(images, training=False)` maps normalised images to DeepLab2's named
  outputs (`encoder/<endpoint>`, `decoder/<key>`).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if layout in KMAX_LAYOUTS:
    model, items, options = _kmax_deeplab(dl2, path, layout, width, expansion,
                                          input_size)

    def kmax_call(images, training=False):
      # The predictions before post-processing, with every layer's.
      outputs = model._forward_step(images, training=training)  # pylint: disable=protected-access
      layers = outputs.pop('auxiliary_outputs_pred')
      named = {f'kmax/{k}': v for k, v in outputs.items()}
      for index, layer_outputs in enumerate(layers):
        named.update({f'kmax/layer{index}/{k}': v
                      for k, v in layer_outputs.items()})
      return named
    kmax_call(tf.zeros([1, input_size, input_size, 3]))
    return kmax_call, items, options
  if layout == MAX_DEEPLAB_S_COCO:
    model, items, options = _max_deeplab_s(dl2, path, width, expansion,
                                           input_size)
    encoder, decoder = model._encoder, model._decoder  # pylint: disable=protected-access
  else:
    encoder, items, options = _backbone(dl2, layout, width)
    decoder = None

  def call(images, training=False):
    features = encoder(images, training=training)
    outputs = {f'encoder/{k}': v for k, v in features.items()
               if isinstance(v, tf.Tensor)}
    if decoder is not None:
      outputs.update({f'decoder/{k}': v for k, v in
                      decoder(features, training=training).items()})
    return outputs

  call(tf.zeros([1, input_size, input_size, 3]))
  return call, items, options


def randomise(variables, rng):
  """Random values for every variable; batch-norm statistics included.

  Batch-norm gammas and moving variances U(0.5, 1.5), betas and moving means
  N(0, 0.2); other variables that start constant (biases) N(0, 0.2). Kernels
  keep their random initial values times KERNEL_SCALE: at DeepLab2's He
  initialisation, with statistics that do not fit the activations, outputs
  grow through the network until the attention softmaxes saturate and move by
  percents for round-off changes of the input, which no float32 comparison
  can pass (`input_sensitivity`).
  """
  for variable in variables:
    name, shape = variable.name, variable.shape.as_list()
    if 'gamma' in name or 'moving_variance' in name:
      value = rng.uniform(0.5, 1.5, shape)
    elif 'beta' in name or 'moving_mean' in name:
      value = rng.normal(0.0, 0.2, shape)
    else:
      value = variable.numpy()
      if value.size > 1 and value.std() > 0:
        if 'kernel' not in name:
          continue
        value = value * KERNEL_SCALE
      else:
        value = rng.normal(0.0, 0.2, shape)
    variable.assign(value.astype(variable.dtype.as_numpy_dtype))


def input_sensitivity(call, images, rng):
  """Largest relative change of an output for N(0, 1e-6) noise on the input."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  clean = call(images)
  noisy = call(images + tf.constant(rng.normal(0.0, 1e-6, images.shape),
                                    tf.float32))
  return max(float(np.max(np.abs(noisy[k] - v)) / np.max(np.abs(v)))
             for k, v in clean.items())


def assignment_margin(outputs):
  """Smallest gap between the top two mask logits of a pixel, over kMaX's
  layers, relative to each layer's largest logit."""
  margins = []
  for key, value in outputs.items():
    if key.startswith('kmax/layer') and key.endswith('/pixel_space_mask_logits'):
      top2 = np.sort(value.numpy(), axis=-1)[..., -2:]
      margins.append(np.min(top2[..., 1] - top2[..., 0]) /
                     np.max(np.abs(value.numpy())))
  return float(min(margins))


def _checkpoint_shapes(items):
  """Key -> shape of the checkpoint DeepLab2 writes for `items`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as folder:
    prefix = tf.train.Checkpoint(**items).write(os.path.join(folder, 'ckpt'))
    return dict(tf.train.list_variables(prefix))


def write_fixture(dl2, path, layout, output_dir, rng):
  """Writes one small fixture folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  size = {MAX_DEEPLAB_S_COCO: MAX_DEEPLAB_S_INPUT, KMAX_RESNET50_COCO: _KMAX_INPUT,
          KMAX_AXIAL_RESNET50_COCO: _KMAX_INPUT}.get(layout, BACKBONE_INPUT)
  expansion = (KMAX_TRANSFORMER_EXPANSION if layout in KMAX_LAYOUTS else
               TRANSFORMER_EXPANSION)
  call, items, options = build(dl2, path, layout, WIDTH, expansion, size)
  randomise([v for item in items.values() for v in item.variables], rng)
  image = rng.integers(0, 256, [1, size, size, 3], dtype=np.uint8)
  images = tf.constant(image, tf.float32) / 127.5 - 1.0
  outputs = call(images)
  if layout in KMAX_LAYOUTS:
    options['assignment_margin'] = assignment_margin(outputs)
  if options.get('assignment_margin', np.inf) < _MIN_ASSIGNMENT_MARGIN:
    raise ValueError(f'{layout}: two mask logits of a pixel are within '
                     f'{options["assignment_margin"]:.2g} of the logit scale; '
                     "kMaX's argmax assignment could flip under round-off.")
  options['input_noise_sensitivity'] = input_sensitivity(call, images, rng)
  if options['input_noise_sensitivity'] > _MAX_SENSITIVITY:
    raise ValueError(f'{layout}: outputs move by '
                     f'{options["input_noise_sensitivity"]:.2g} of their scale '
                     'for 1e-6 input noise; float32 comparisons would fail.')
  folder = os.path.join(output_dir, layout)
  os.makedirs(folder, exist_ok=True)
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(1, dtype=tf.int64), **items)
  checkpoint.write(os.path.join(folder, 'ckpt-1'))
  np.savez(os.path.join(folder, 'reference.npz'), image=image,
           **{k: v.numpy() for k, v in outputs.items()})
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(options, f, indent=1, sort_keys=True)


def full_size_listing(dl2, path, layouts):
  """Layout -> {key: shape} of the published (full-width) checkpoints.

  The COCO checkpoints come from DeepLab2's trainer, which stores `global_step`
  beside the model; the listings of the ImageNet backbones hold the model only.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  listing = {}
  for layout in layouts:
    size = _KMAX_INPUT if layout in KMAX_LAYOUTS else _FULL_SIZE_INPUT
    _, items, _ = build(dl2, path, layout, 1.0, 1.0, size)
    if layout in (MAX_DEEPLAB_S_COCO,) + KMAX_LAYOUTS:
      items = dict(items, global_step=tf.Variable(0, dtype=tf.int64))
    listing[layout] = {k: list(v) for k, v in
                       sorted(_checkpoint_shapes(items).items())}
  return listing


def main(argv):
  del argv
  path = _DEEPLAB2_PATH.value
  if not path:
    raise app.UsageError('--deeplab2_path is required.')
  dl2 = _import_deeplab2(path)
  import tf_keras  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(_SEED.value)  # DeepLab2's initialisers.
  rng = np.random.default_rng(_SEED.value)
  for layout in LAYOUTS:
    write_fixture(dl2, path, layout, _OUTPUT_DIR.value, rng)
    print(f'wrote {os.path.join(_OUTPUT_DIR.value, layout)}')
  for name, layouts in FULL_SIZE_FILES.items():
    listing = full_size_listing(dl2, path, layouts)
    target = os.path.join(_OUTPUT_DIR.value, name)
    with open(target, 'w') as f:
      json.dump(listing, f, indent=1, sort_keys=True)
    print(f'wrote {target}')


if __name__ == '__main__':
  app.run(main)
