"""Recursive Feature Network (RFN) of two CMT-DeepLab networks.

Supplement §1 of CMT-DeepLab [1], after DetectoRS's RFP [2]: two networks are
stacked; the first network's stride-4 decoder features are averaged into the
second network's stride-4 encoder features (no fusion module); both share ONE
set of cluster centers, updated first by the first network and then by the
second (the second network owns no initial centers); the first network's outputs
are returned for supervision (the loss matches them with the Hungarian matching
of the final output).

[1] CMT-DeepLab: Clustering Mask Transformers for Panoptic Segmentation,
    Yu et al., CVPR 2022.
[2] DetectoRS, Qiao, Chen, Yuille, CVPR 2021.
"""
import tf_keras

from cmt_deeplab_tf import common


class RecursiveFeatureNetwork(tf_keras.Model):
  """first_network -> (centers, stride-4 features) -> second_network."""

  def __init__(self, first_network, second_network, name='rfn'):
    """Initializes the RFN.

    Args:
      first_network: A `CMTDeepLab` that owns the initial cluster centers.
      second_network: A `CMTDeepLab` built with learn_initial_centers=False.
      name: The model name.

    Raises:
      ValueError: If the second network owns initial centers or the first does
        not (the centers must be one shared set).
    """
    if not first_network.transformer.has_initial_centers:
      raise ValueError('RFN first_network must own the initial centers.')
    if second_network.transformer.has_initial_centers:
      raise ValueError('RFN second_network must not own initial centers (the '
                       'two networks share one set).')
    super().__init__(name=name)
    self.first_network = first_network
    self.second_network = second_network

  @property
  def backbone_variables(self):
    """The trainable variables of both networks' backbones."""
    return (self.first_network.backbone_variables +
            self.second_network.backbone_variables)

  def call(self, images, training=None, return_visualization=False):
    """Runs both networks.

    Args:
      images: float32 [B, H, W, 3] in [-1, 1].
      training: Training mode.
      return_visualization: Also return the per-layer maps (of both networks,
        first network's under FIRST_NETWORK_OUTPUTS).

    Returns:
      The second network's output dict, plus FIRST_NETWORK_OUTPUTS: the first
      network's output dict (same keys, incl. AUX_OUTPUTS).
    """
    first_outputs, centers, features = self.first_network.forward(
        images, training=training, return_visualization=return_visualization)
    outputs, _, _ = self.second_network.forward(
        images, training=training, return_visualization=return_visualization,
        centers=centers, res2_fusion=features)
    outputs[common.FIRST_NETWORK_OUTPUTS] = first_outputs
    return outputs
