"""TensorFlow ops on model outputs: post-processing into panoptic maps, their colours."""
