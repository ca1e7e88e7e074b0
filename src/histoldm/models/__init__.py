"""Model definitions: autoencoder and UNet presets, the noise schedule, model bundles, conversion."""
