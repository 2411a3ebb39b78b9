"""Parameter counts as the CMT-DeepLab paper counts them.

The paper's parameter counts (supplement Table 2) are those of the inference
graph: training-only heads (the auxiliary semantic head) are excluded, as
checked on DeepLab2's MaX-DeepLab-S (77.76M trainable - 15.86M semantic head =
the paper's 61.9M). TRAINING_ONLY is the semantic head with, for kMaX-DeepLab's
'aspp' branch, its semantic decoder: INFERENCE_TOTAL + TRAINING_ONLY is then
DeepLab2's trainable count of its COCO kMaX-DeepLab models.
"""
import numpy as np

BACKBONE = 'backbone'
PIXEL_DECODER = 'pixel_decoder'
TRANSFORMER = 'transformer'
HEADS = 'heads'
TRAINING_ONLY = 'training_only'
INFERENCE_TOTAL = 'inference_total'
COMPONENTS = (BACKBONE, PIXEL_DECODER, TRANSFORMER, HEADS)
# The training-only parts of a network (kMaX's 'aspp' branch has both).
_TRAINING_ONLY_PARTS = ('semantic_decoder', 'semantic_head')


def _count(layer):
  if layer is None:
    return 0
  return int(sum(np.prod(v.shape) for v in layer.trainable_variables))


def networks_of(model):
  """The `CMTDeepLab` networks of a model (two for an RFN)."""
  if hasattr(model, 'first_network'):
    return [model.first_network, model.second_network]
  return [model]


def parameter_breakdown(model):
  """Counts the trainable parameters of a built model by component.

  Args:
    model: A built `CMTDeepLab`, `RecursiveFeatureNetwork` or `KMaXDeepLab`.

  Returns:
    A dict of ints: BACKBONE, PIXEL_DECODER, TRANSFORMER (with the cluster
    centers), HEADS (inference heads), TRAINING_ONLY (semantic head and
    decoder) and INFERENCE_TOTAL (everything but TRAINING_ONLY), summed over
    networks.
  """
  counts = dict.fromkeys(COMPONENTS + (TRAINING_ONLY,), 0)
  for network in networks_of(model):
    for component in COMPONENTS:
      counts[component] += _count(getattr(network, component))
    counts[TRAINING_ONLY] += sum(_count(getattr(network, part, None))
                                 for part in _TRAINING_ONLY_PARTS)
  counts[INFERENCE_TOTAL] = sum(counts[c] for c in COMPONENTS)
  return counts
