"""The job's side of a recorded sweep: which sweep am I in, what do I tag, do I report to Optuna.

A job learns about its sweep from `deepmine-sweep.json` in the sweep folder (written by the
sweeper before launching) and from its own Hydra config (job number, overrides). Files and the
Hydra config travel to every launcher's workers, local or on a cluster; environment variables
would leak from one job into the next in a reused worker process.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepmine.sweeps.record import SweepInfo


@dataclass
class SweepJob:
    info: SweepInfo
    num: int
    overrides: list[str]

    def tags(self) -> dict[str, str]:
        from deepmine.tracking.sweep import JOB_TAG, PARENT_TAG, SWEEP_ID_TAG

        tags = {
            SWEEP_ID_TAG: self.info.sweep_id,
            JOB_TAG: str(self.num),
            "deepmine.sweep.kind": self.info.kind,
        }
        if self.info.parent_run_id:
            tags[PARENT_TAG] = self.info.parent_run_id
        if self.info.study:
            tags["deepmine.optuna.study"] = self.info.study["study_name"]
            tags["deepmine.optuna.trial"] = str(self.num)
        if self.info.worker:  # a shared study: which of its workers ran this trial
            tags["deepmine.optuna.worker"] = self.info.worker
        return tags

    def swept_values(self) -> dict[str, object]:
        """The values this job got for the swept keys, typed as Hydra parsed them."""
        return swept_values(self.overrides, self.info.swept)

    def run_name(self) -> str:
        """`lr=0.01 seed=2` (a grid job), `trial 3 lr=0.0123 wd=1.2e-05` (an Optuna trial):
        what sets this child apart from its siblings, readable in MLflow's run lists. A job
        that fails before opening its run gets the same name from the sweeper."""
        from deepmine.sweeps.names import job_run_name

        return job_run_name(self.info.kind, self.info.swept, self.num, self.swept_values())

    def params(self) -> dict[str, str]:
        """The swept overrides as params under `sweep.`: in MLflow's compare view of the
        children these are the columns that differ."""
        from deepmine.sweeps.names import bare_key

        # `+x.y=a,b` sweeps a new key: MLflow refuses a `+` in a param's name
        return {f"sweep.{bare_key(k)}": str(v) for k, v in self.swept_values().items()}

    def callbacks(self) -> list:
        """Optuna's Lightning pruning callback, reporting to this job's trial, when the search
        prunes; nothing otherwise."""
        study = self.info.study
        if not study or not study.get("pruning_metric"):
            return []
        import optuna
        from hydra.utils import instantiate
        from optuna_integration import PyTorchLightningPruningCallback

        storage = optuna.storages.get_storage(study["storage"])
        study_id = storage.get_study_id_from_name(study["study_name"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.num)
        # Optuna's storage keeps no pruner, and `should_prune` asks the study's own pruner
        pruner = instantiate(study["pruner"])
        loaded = optuna.load_study(study_name=study["study_name"], storage=storage, pruner=pruner)
        trial = optuna.trial.Trial(loaded, trial_id)
        return [PyTorchLightningPruningCallback(trial, monitor=study["pruning_metric"])]

    def pruned_errors(self) -> tuple[type[BaseException], ...]:
        if not (self.info.study and self.info.study.get("pruning_metric")):
            return ()
        import optuna

        return (optuna.TrialPruned,)


def current_job() -> SweepJob | None:
    """This job's sweep, or None for a single run (or a sweep by a non-deepmine sweeper)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    info = SweepInfo.load(hydra_cfg.sweep.dir)
    if info is None:
        return None
    return SweepJob(info, int(hydra_cfg.job.num), list(hydra_cfg.overrides.task))


def swept_values(overrides: list[str], swept: list[str]) -> dict[str, object]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    found = {o.get_key_element(): o.value() for o in parsed if not o.is_delete()}
    return {key: found[key] for key in swept if key in found}
