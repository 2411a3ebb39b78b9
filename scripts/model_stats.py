"""Prints parameters and multiply-adds of the model configs beside the paper's.

Parameters are counted as the paper counts them (inference graph only: the
training-only semantic head is excluded) and split into backbone / pixel decoder
/ transformer / heads. FLOPs are multiply-adds of the inference graph at
1200x800 (H=800, W=1200), batch 1, with einsum (attention) included; see
`cmt_deeplab_tf.modeling.flop_count`.

Usage:
  python scripts/model_stats.py [--models=max_deeplab_s,cmt_deeplab_s,...]
"""
from absl import app
from absl import flags
import tensorflow as tf

from cmt_deeplab_tf.modeling import builder
from cmt_deeplab_tf.modeling import flop_count
from cmt_deeplab_tf.modeling import parameter_count as pc

# Supplement Table 2: (params, GFLOPs = G multiply-adds at 1200x800).
PAPER = {
    'max_deeplab_s': (61.9e6, 291.0),
    'cmt_deeplab_s': (94.9e6, 396.0),
    'cmt_deeplab_l': (135.2e6, 553.0),
    'cmt_deeplab_l_rfn': (270.3e6, 1114.0),
}

_MODELS = flags.DEFINE_list('models', list(PAPER), 'Configs to measure.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 133, 'COCO panoptic: 133.')
_NUM_CLUSTERS = flags.DEFINE_integer('num_clusters', 128, 'Mask slots.')
_HEIGHT = flags.DEFINE_integer('height', 800, 'Input height.')
_WIDTH = flags.DEFINE_integer('width', 1200, 'Input width.')
_FLOPS = flags.DEFINE_bool('flops', True, 'Also count multiply-adds.')


def _millions(count):
  return f'{count / 1e6:.2f}M'


def main(argv):
  del argv
  print(f'Inference parameters ({_NUM_CLASSES.value} classes, '
        f'{_NUM_CLUSTERS.value} clusters) and G multiply-adds at '
        f'{_WIDTH.value}x{_HEIGHT.value}, batch 1.\n')
  print('| model | params | paper | gap | backbone | pixel decoder | '
        'transformer | heads | (training-only) | GMACs | paper | ratio |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for name in _MODELS.value:
    model = builder.build_model(name, _NUM_CLASSES.value, _NUM_CLUSTERS.value)
    model(tf.zeros([1, 33, 33, 3]), training=True)  # Builds every head.
    macs = None
    if _FLOPS.value:
      macs, _ = flop_count.count_multiply_adds(model, _HEIGHT.value,
                                               _WIDTH.value)
    counts = pc.parameter_breakdown(model)
    total = counts[pc.INFERENCE_TOTAL]
    paper_params, paper_gflops = PAPER.get(name, (None, None))
    paper, gap, paper_macs, ratio = '-', '-', '-', '-'
    if paper_params is not None:
      paper = _millions(paper_params)
      gap = f'{100 * (total / paper_params - 1):+.1f}%'
      paper_macs = f'{paper_gflops:.0f}'
    gmacs = '-' if macs is None else f'{macs / 1e9:.1f}'
    if macs is not None and paper_gflops is not None:
      ratio = f'{macs / 1e9 / paper_gflops:.2f}'
    print(f'| {name} | {_millions(total)} | {paper} | {gap} | '
          f'{_millions(counts[pc.BACKBONE])} | '
          f'{_millions(counts[pc.PIXEL_DECODER])} | '
          f'{_millions(counts[pc.TRANSFORMER])} | '
          f'{_millions(counts[pc.HEADS])} | '
          f'{_millions(counts[pc.TRAINING_ONLY])} | {gmacs} | '
          f'{paper_macs} | {ratio} |', flush=True)


if __name__ == '__main__':
  app.run(main)
