"""The absl + gin + Orbit training system under TensorFlow distribution strategies."""
