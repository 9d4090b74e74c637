"""LightningDataModules that hold whole datasets in memory as tensors, and the data version."""
