"""LightningModules: losses, metrics, optimisers."""
