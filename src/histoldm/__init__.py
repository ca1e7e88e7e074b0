"""histoldm: text-conditioned latent diffusion for cancer histopathology."""

__version__ = "0.1.0"
