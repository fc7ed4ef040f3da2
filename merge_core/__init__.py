"""Merge library: checkpoints, architectures, tied embeddings, merge methods, recipes, writer."""
