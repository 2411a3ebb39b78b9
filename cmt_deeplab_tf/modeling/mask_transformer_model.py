"""What every model of the family shares: its five parts.

CMT-DeepLab and MaX-DeepLab-S (`cmt_deeplab.CMTDeepLab`) and kMaX-DeepLab
(`kmax_deeplab.KMaXDeepLab`) are each a backbone, a pixel decoder, a
transformer decoder, prediction heads on the final cluster centers and a
training-only semantic head. The attributes split the parameters as
`parameter_count` counts them; the backbone's variables train with a smaller
learning rate (`optimization.split_backbone_variables`). Each subclass writes
its own forward pass.
"""
import tf_keras


class MaskTransformerModel(tf_keras.Model):
  """Backbone, pixel decoder, transformer decoder, heads, semantic head."""

  def __init__(self, backbone, pixel_decoder, transformer, heads,
               semantic_head=None, name=None):
    """Initializes the model.

    Args:
      backbone: An `AxialResNet`.
      pixel_decoder: The model's pixel decoder.
      transformer: The model's transformer decoder (its cluster centers).
      heads: A `MaskTransformerHeads` on the final centers.
      semantic_head: Optional training-only `SemanticHead`.
      name: The model name.
    """
    super().__init__(name=name)
    self.backbone = backbone
    self.pixel_decoder = pixel_decoder
    self.transformer = transformer
    self.heads = heads
    self.semantic_head = semantic_head

  @property
  def backbone_variables(self):
    """The backbone's trainable variables (trained with a smaller learning rate)."""
    return self.backbone.trainable_variables
