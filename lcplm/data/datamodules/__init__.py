"""LightningDataModules: one module per data source."""
