"""LightningModules, one per data-mining task. They log through `self.log` only."""
