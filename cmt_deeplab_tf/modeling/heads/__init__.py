"""Prediction heads: classes, masks, pixel embeddings, auxiliary semantics."""
