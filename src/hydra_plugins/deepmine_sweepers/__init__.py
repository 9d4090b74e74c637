"""deepmine's Hydra sweepers (`hydra/sweeper=grid`, `hydra/sweeper=optuna` in conf/)."""
