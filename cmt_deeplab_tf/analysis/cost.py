"""The accuracy-cost measurements of supplement Table 2 for our model configs.

Per config:
  params   inference parameters as the paper counts them (training-only heads
           excluded), `modeling.parameter_count`;
  FLOPs    multiply-adds of the inference graph (einsum included) at the given
           size, batch 1, `modeling.flop_count`;
  FPS      1 / median wall time of `model(images, training=False)` under
           `tf.function`, batch 1, after two warm-up calls, outputs fetched to
           the host (network forward only, no post-processing), on the current
           device;
  memory   peak memory of one training step at batch 1 (see
           `training_step_peak_memory`).

The paper measured FPS on a V100 and memory on a TPUv4 (supplement Sec. 2);
`PAPER_ROWS` keeps its Table 2 as data so the table shows both.

`python -m cmt_deeplab_tf.analysis.cost MODE NAME CLASSES CLUSTERS HEIGHT WIDTH
[GIN_BINDING ...]` is the fresh process of the memory measurement; it prints one
JSON line.

The memory figure is that of the project's own training step, so the probe runs
`training.trainer.PanopticTrainer` (the same loss, gradients, clipping and AdamW
update `train.py` runs) rather than a re-written step that could drift from it.
This is a downward import: analysis sits above training (`tests/test_layering.py`).
FPS uses the benchmarks' harness (`analysis.timing`).
"""
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf
import tf_keras

from cmt_deeplab_tf import common
from cmt_deeplab_tf.analysis import paper_tables
from cmt_deeplab_tf.analysis import timing
from cmt_deeplab_tf.data import targets as targets_lib
from cmt_deeplab_tf.losses import panoptic_loss
from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import flop_count
from cmt_deeplab_tf.modeling import parameter_count
from cmt_deeplab_tf.training import experiment
from cmt_deeplab_tf.training import optimization
from cmt_deeplab_tf.training import task as task_lib
from cmt_deeplab_tf.training import trainer as trainer_lib

GPU_PEAK = 'GPU:0 peak allocated (tf.config.experimental.get_memory_info)'
CPU_PEAK_RSS = ('peak RSS increase of a fresh process from after its imports to '
                'after one train step (model build, trace, forward, PanopticLoss, '
                'backward, AdamW update)')
CPU_PEAK_RSS_FORWARD_BACKWARD = ('peak RSS increase of a fresh process from after its '
                                 'imports to after one forward + backward (model build, '
                                 'trace, forward, PanopticLoss, backward)')
# What the memory probe runs: the project's whole training step, or its forward
# pass, PanopticLoss and gradients only (no optimizer: how a forward + backward is
# measured for another implementation).
TRAIN_STEP = 'train_step'
FORWARD_BACKWARD = 'forward_backward'
PROBE_MODES = (TRAIN_STEP, FORWARD_BACKWARD)
TABLE_HEADER = ('method', 'epochs', 'memory', 'params', 'FLOPs', 'FPS', 'PQ')
_MEMORY_PROBE_LABEL_DIVISOR = 1000
_MEMORY_PROBE_BLOCK = 64  # Side of the random segments of the probe's label.


@dataclasses.dataclass(frozen=True)
class PaperRow:
  """One row of supplement Table 2 (None where the paper has '-')."""
  method: str
  epochs: int
  memory_gb: Optional[float]
  params_m: float
  gflops: float
  fps: float
  pq: float


# Supplement Table 2 (COCO val; FPS on a V100, memory on a TPUv4, 1200x800, batch 1).
PAPER_ROWS = (
    PaperRow('MaskFormer-SwinB', 300, None, 102, 411, 8.4, 51.8),
    PaperRow('MaskFormer-SwinL', 300, None, 212, 792, 5.2, 52.7),
    PaperRow('MaX-DeepLab-S', 216, 6.3, 62, 291, 11.9, 48.4),
    PaperRow('MaX-DeepLab-L', 216, 28.7, 451, 3317, 2.2, 51.1),
    PaperRow('CMT-DeepLab-S', 54, 10.2, 95, 396, 8.1, 53.0),
    PaperRow('CMT-DeepLab-L', 54, 11.8, 135, 553, 6.0, 54.1),
    PaperRow('CMT-DeepLab-L-RFN', 54, 25.8, 270, 1114, 3.2, 55.1),
    PaperRow('CMT-DeepLab-L-RFN', 108, 25.8, 270, 1114, 3.2, 55.3),
)
# Our config -> the first paper row of the same method.
PAPER_METHOD = {
    'max_deeplab_s': 'MaX-DeepLab-S',
    'cmt_deeplab_s': 'CMT-DeepLab-S',
    'cmt_deeplab_l': 'CMT-DeepLab-L',
    'cmt_deeplab_l_rfn': 'CMT-DeepLab-L-RFN',
}


@dataclasses.dataclass(frozen=True)
class Measurement:
  """Our figures for one config (None where not measured)."""
  name: str
  params: int
  multiply_adds: int
  fps: Optional[float]
  memory_bytes: Optional[int]
  memory_error: Optional[str] = None


def build(name: str, num_classes: int, num_clusters: int):
  """Builds a named config with every head (the training-only one included)."""
  model = builder.build_model(name, num_classes, num_clusters)
  task_lib.create_all_variables(model, tf.distribute.get_strategy())
  return model


def inference_parameters(model) -> int:
  """Parameters as the paper counts them: without training-only heads."""
  return parameter_count.parameter_breakdown(model)[parameter_count.INFERENCE_TOTAL]


def frames_per_second(model, height: int, width: int, runs: int,
                      warmup: int = 2) -> float:
  """1 / median seconds of a batch-1 `tf.function` forward after `warmup` calls."""
  if runs < 1:
    raise ValueError(f'runs must be >= 1, got {runs}.')
  forward = tf.function(lambda images: model(images, training=False))
  images = tf.random.uniform([1, height, width, 3], -1.0, 1.0)
  return 1.0 / timing.median_seconds(lambda: forward(images), runs, warmup)


def random_block_label(height: int, width: int, num_classes: int,
                       seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """(classes, instance ids), int64 [height, width]: random 64x64 blocks, each of
  a class in [0, num_classes) and an instance id in 1..3, the probes' label."""
  rng = np.random.default_rng(seed)
  rows, cols = -(-height // _MEMORY_PROBE_BLOCK), -(-width // _MEMORY_PROBE_BLOCK)
  block = np.ones([_MEMORY_PROBE_BLOCK] * 2, np.int64)
  classes = np.kron(rng.integers(0, num_classes, [rows, cols]), block)
  instances = np.kron(rng.integers(1, 4, [rows, cols]), block)
  return classes[:height, :width], instances[:height, :width]


def random_training_batch(height: int, width: int, num_classes: int,
                          max_num_masks: int, seed: int = 0) -> Dict[str, tf.Tensor]:
  """A batch-1 random image with the pipeline's targets of `random_block_label`
  (the even classes things)."""
  classes, instances = random_block_label(height, width, num_classes, seed)
  is_thing = [index % 2 == 0 for index in range(num_classes)]
  features = targets_lib.build_targets(
      tf.constant(classes * _MEMORY_PROBE_LABEL_DIVISOR + instances, tf.int32), is_thing,
      _MEMORY_PROBE_LABEL_DIVISOR, max_num_masks)
  features[common.IMAGE] = tf.random.uniform([height, width, 3], -1.0, 1.0, seed=seed)
  return {key: value[tf.newaxis] for key, value in features.items()}


def step_trainer(model, loss_fn: panoptic_loss.PanopticLoss, batch: Dict[str, tf.Tensor],
                 train_steps: int = 100) -> trainer_lib.PanopticTrainer:
  """The project's `PanopticTrainer` on `batch` repeated (current strategy, no eval)."""
  return trainer_lib.PanopticTrainer(
      strategy=tf.distribute.get_strategy(), model=model, loss_fn=loss_fn,
      optimizer_config=optimization.OptimizerConfig(train_steps=train_steps,
                                                    warmup_steps=0),
      post_processor=None, evaluator=None,
      train_dataset_fn=lambda _: tf.data.Dataset.from_tensors(batch).repeat())


def run_one_training_step(model, num_classes: int, batch: Dict[str, tf.Tensor]) -> float:
  """One step of the project's `PanopticTrainer` on `batch`; returns the total loss."""
  loss_fn = panoptic_loss.PanopticLoss(num_classes=num_classes, global_batch_size=1)
  trainer = step_trainer(model, loss_fn, batch, train_steps=2)
  return trainer.train(tf.constant(1))[panoptic_loss.TOTAL]


def forward_backward_step(model, loss_fn: panoptic_loss.PanopticLoss,
                          jit_compile: bool = False):
  """A `tf.function` batch -> (total loss, gradients): a step without its update."""

  @tf.function(jit_compile=jit_compile)
  def losses_and_gradients(features):
    with tf.GradientTape() as tape:
      total = loss_fn(features, model(features[common.IMAGE], training=True))[
          panoptic_loss.TOTAL]
    return total, tape.gradient(total, model.trainable_variables)
  return losses_and_gradients


def run_forward_backward(model, num_classes: int, batch: Dict[str, tf.Tensor]) -> float:
  """The forward pass, PanopticLoss and gradients of a step, without an update."""
  loss_fn = panoptic_loss.PanopticLoss(num_classes=num_classes, global_batch_size=1)
  return forward_backward_step(model, loss_fn)(batch)[0]


def max_rss_bytes() -> int:
  """This process's peak resident memory so far, in bytes."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


def _allocator_stats(device: str) -> Optional[Dict[str, int]]:
  """TensorFlow's {'current', 'peak'} allocated bytes on `device`, or None where
  its allocator keeps no statistics (the default CPU allocator; a GPU's and the
  CPU's BFC allocator, TF_CPU_ALLOCATOR_USE_BFC=true, keep them)."""
  try:
    return tf.config.experimental.get_memory_info(device)
  except ValueError:
    return None


def measure_training_step_memory(name: str, num_classes: int, num_clusters: int,
                                 height: int, width: int,
                                 mode: str = TRAIN_STEP) -> Dict[str, object]:
  """In this process: builds `name`, runs one step, returns its peak memory.

  Gin bindings already parsed (e.g. recompute switches) apply to the model and
  the loss. `mode` is one of `PROBE_MODES`.
  """
  device = 'GPU:0' if tf.config.list_physical_devices('GPU') else 'CPU:0'
  rss_before = max_rss_bytes()
  model = build(name, num_classes, num_clusters)
  batch = random_training_batch(height, width, num_classes, num_clusters)
  rss_built = max_rss_bytes()
  built = _allocator_stats(device)
  if built is not None:
    tf.config.experimental.reset_memory_stats(device)
  run = run_one_training_step if mode == TRAIN_STEP else run_forward_backward
  loss = run(model, num_classes, batch)
  result = {'loss': float(loss),
            'dtype_policy': tf_keras.mixed_precision.global_policy().name}
  if built is not None:
    # TensorFlow's own peak allocation during the step, over what the built model
    # held: tensors only (no graph, allocator slack, oneDNN caches or Python).
    allocator_peak = _allocator_stats(device)['peak']
    result['allocator_step_bytes'] = int(allocator_peak - built['current'])
  if device.startswith('GPU'):
    result.update(bytes=int(allocator_peak), what=GPU_PEAK)
  else:
    rss_after = max_rss_bytes()
    # The growth of the peak over the step alone (the model already built).
    what = CPU_PEAK_RSS if mode == TRAIN_STEP else CPU_PEAK_RSS_FORWARD_BACKWARD
    result.update(bytes=rss_after - rss_before, what=what,
                  step_bytes=rss_after - rss_built)
  return result


def training_step_peak_memory(name: str, num_classes: int, num_clusters: int,
                              height: int, width: int, gin_bindings: Sequence[str] = (),
                              memory_limit_bytes: Optional[int] = None,
                              mode: str = TRAIN_STEP) -> Dict[str, object]:
  """Peak memory of one batch-1 training step, measured in a fresh subprocess.

  On a GPU: TF's peak allocation on GPU:0 during the step. On CPU: the increase
  of the process's peak RSS (ru_maxrss) from after its imports to after the
  step, which covers building the model, tracing the step, the forward pass, the
  real PanopticLoss on a random batch with targets, the gradients and the AdamW
  update (optimizer slots included).

  Args:
    name, num_classes, num_clusters, height, width: the config and input size.
    gin_bindings: gin bindings for the fresh process (e.g. recompute switches;
      `ExperimentConfig.mixed_precision` sets the dtype policy).
    memory_limit_bytes: the process is killed once its resident memory exceeds
      this (so that a step that does not fit cannot push a shared machine into
      swap); None: no limit.
    mode: TRAIN_STEP (the whole step; the figure of `what`) or
      FORWARD_BACKWARD (no optimizer update and no optimizer slots).

  Returns:
    {'bytes': int, 'what': description of the figure, 'loss': the step's loss,
    'allocator_step_bytes': TensorFlow's peak tensor allocation during the step
    over what the built model held (where the allocator keeps statistics: on a
    GPU, not with TensorFlow's default CPU allocator), on CPU also
    'step_bytes': the growth of the peak RSS over the step alone, from after
    the model's variables exist}.

  Raises:
    MemoryError: if the process went over `memory_limit_bytes`.
    RuntimeError: with the subprocess's stderr if it failed otherwise.
  """
  if mode not in PROBE_MODES:
    raise ValueError(f'mode must be one of {PROBE_MODES}, got {mode!r}.')
  command = [sys.executable, '-m', __name__, mode, name, str(num_classes),
             str(num_clusters), str(height), str(width), *gin_bindings]
  return run_fresh_process(command, memory_limit_bytes,
                           f'Memory probe of {name} at {height}x{width}')


def run_fresh_process(command: Sequence[str], memory_limit_bytes: Optional[int],
                     label: str, env: Optional[Dict[str, str]] = None) -> Dict[str, object]:
  """Runs a benchmark's fresh process (a memory probe, a timing); returns the JSON
  of its last stdout line.

  Args:
    command: the process's command line.
    memory_limit_bytes: the process is killed once its resident memory exceeds
      this; None: no limit.
    label: what runs, for the errors ('Memory probe of ...').
    env: variables added to this process's environment.

  Raises:
    MemoryError: if the process went over `memory_limit_bytes`.
    RuntimeError: with the process's stderr if it failed otherwise.
  """
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    process = subprocess.Popen(command, stdout=out, stderr=err, text=True,
                               env=dict(os.environ, **(env or {})))
    over_limit = wait_within_memory(process, memory_limit_bytes)
    process.wait()
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  if over_limit:
    raise MemoryError(f'{label} went over '
                      f'{memory_limit_bytes / 2**30:.1f} GiB and was stopped.')
  if process.returncode != 0:
    killed = ' (killed: out of memory?)' if process.returncode == -9 else ''
    raise RuntimeError(f'{label} failed with code {process.returncode}'
                       f'{killed}:\n{stderr[-3000:]}')
  return json.loads(stdout.strip().splitlines()[-1])


def _resident_bytes(pid: int) -> int:
  """VmRSS of a Linux process, 0 once it is gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def wait_within_memory(process: subprocess.Popen, limit: Optional[int]) -> bool:
  """Waits for `process`; kills it if its RSS exceeds `limit`. True if killed."""
  if limit is None:
    return False
  while process.poll() is None:
    if _resident_bytes(process.pid) > limit:
      process.kill()
      return True
    time.sleep(0.2)
  return False


def shipped_policy(gin_config: str) -> Tuple[str, str, bool]:
  """(build_model.name, build_model.recompute, PanopticLoss.recompute) a gin config
  binds (a shipped config's name, e.g. 'coco/cmt_deeplab_s.gin', or a path), its
  includes followed."""
  from cmt_deeplab_tf.training import experiment  # pylint: disable=g-import-not-at-top
  from cmt_deeplab_tf.training import train_lib  # pylint: disable=g-import-not-at-top,unused-import
  experiment.parse_gin([gin_config], [])
  try:
    return (gin.query_parameter('build_model.name'),
            gin.query_parameter('build_model.recompute'),
            bool(gin.query_parameter('PanopticLoss.recompute')))
  finally:
    gin.clear_config()


def measure(name: str, num_classes: int, num_clusters: int, height: int, width: int,
            fps_runs: int, with_memory: bool,
            memory_bindings: Sequence[str] = ()) -> Measurement:
  """All of our figures for one config (FPS skipped when fps_runs == 0).

  `memory_bindings` (gin, e.g. `recompute_search.bindings`) apply to the memory probe. A
  failed memory probe (e.g. killed for lack of RAM) leaves `memory_bytes` None
  and its error in `memory_error`; the other figures are kept.
  """
  model = build(name, num_classes, num_clusters)
  multiply_adds, _ = flop_count.count_multiply_adds(model, height, width)
  fps = frames_per_second(model, height, width, fps_runs) if fps_runs else None
  memory_bytes = memory_error = None
  if with_memory:
    try:
      memory_bytes = training_step_peak_memory(name, num_classes, num_clusters, height,
                                               width, memory_bindings)['bytes']
    except RuntimeError as e:
      memory_error = str(e)
  return Measurement(name, inference_parameters(model), multiply_adds, fps,
                     memory_bytes, memory_error)


def _cell(value, fmt: str) -> str:
  return '-' if value is None else fmt.format(value)


def _paper_cells(row: PaperRow) -> List[str]:
  return [f'{row.method} (paper)', str(row.epochs), _cell(row.memory_gb, '{:.1f}G'),
          f'{row.params_m:g}M', f'{row.gflops:g}G', f'{row.fps:.1f}', f'{row.pq:.1f}']


def _our_cells(measurement: Measurement, device: str) -> List[str]:
  memory_gb = (None if measurement.memory_bytes is None
               else measurement.memory_bytes / 2**30)
  memory = 'failed' if measurement.memory_error else _cell(memory_gb, '{:.1f}G')
  return [f'{measurement.name} (ours, {device})', '-', memory,
          f'{measurement.params / 1e6:.1f}M', f'{measurement.multiply_adds / 1e9:.0f}G',
          _cell(measurement.fps, '{:.3g}'), '-']


def markdown_table(measurements: Sequence[Measurement], device: str) -> str:
  """Supplement Table 2 with each of our configs under its paper row.

  Every paper row is kept; ours have no epochs or PQ (not trained on COCO).
  """
  ours_by_method = {}
  for measurement in measurements:
    ours_by_method.setdefault(PAPER_METHOD.get(measurement.name), []).append(measurement)
  rows, placed = [], set()
  for row in PAPER_ROWS:
    rows.append(_paper_cells(row))
    if row.method not in placed:
      placed.add(row.method)
      rows += [_our_cells(m, device) for m in ours_by_method.get(row.method, [])]
  rows += [_our_cells(m, device) for m in ours_by_method.get(None, [])]
  return paper_tables.markdown_table(TABLE_HEADER, rows) + '\n'


def device_name() -> str:
  """'GPU' if TF sees one, else 'CPU'."""
  return 'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'


def _bound_mixed_precision() -> Optional[str]:
  """`ExperimentConfig.mixed_precision` if a binding set it, else None (float32)."""
  try:
    return gin.query_parameter('ExperimentConfig.mixed_precision')
  except ValueError:  # ExperimentConfig has no bound parameter.
    return None


def _probe_main(argv: Sequence[str]) -> None:
  """The fresh process of `training_step_peak_memory`; a binding of
  `ExperimentConfig.mixed_precision` sets the dtype policy of the model and step."""
  mode, name, num_classes, num_clusters, height, width, *bindings = argv
  for binding in bindings:
    gin.parse_config(binding)
  with experiment.dtype_policy(_bound_mixed_precision()):
    result = measure_training_step_memory(name, int(num_classes), int(num_clusters),
                                          int(height), int(width), mode)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  _probe_main(sys.argv[1:])
