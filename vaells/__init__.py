"""VAELLS: Variational Autoencoder with Learned Latent Structure."""

__version__ = "0.1.0"
