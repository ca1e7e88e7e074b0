"""Latent caches, autoencoder training and LDM training (see docs/training.md)."""
