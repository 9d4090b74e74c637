"""One folder per data-mining task (`tasks/<name>/`): its LightningModule, its helpers and its
figures. The folders never import each other; what they share is here: the task contract
(`base.Task`), the k-batch training loop (`steps_per_call`), the standardized-targets base of
regression and forecasting (`scaled_targets`) and gradients inside inference mode (`grad_mode`).
A task's config `_target_` is `deepmine.tasks.<name>.<Class>`: each folder exports its task."""
