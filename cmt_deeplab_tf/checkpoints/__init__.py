"""Checkpoint formats of other code bases and their mapping onto our models."""
