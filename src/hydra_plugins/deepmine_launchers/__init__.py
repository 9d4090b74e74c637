"""deepmine's Hydra launchers: `launcher=ray` (`ray_launcher`) and `launcher=slurm`
(`submitit_slurm`)."""
