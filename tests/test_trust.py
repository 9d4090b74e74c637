"""Recorded configs are untrusted: a `_target_` outside the allowlist is refused before anything
is instantiated. A real recorded run is copied into a tampered one in the same SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import ROOT, one_line_error, run_cli
from deepmine.errors import DeepmineError
from deepmine.provenance import trust

EVIL = "subprocess.Popen"
CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def tampered(tmp_path_factory):
    """(sandbox, real run, tampered run id): the tampered run has the real run's checkpoint and
    output folder, and a config/overrides naming `subprocess.Popen` as the net."""
    from conftest import Sandbox

    box = Sandbox(tmp_path_factory.mktemp("trust"))
    proc = box.train("data=digits", "debug=fast")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (real,) = box.runs()
    client = box.client()
    dest = tmp_path_factory.mktemp("real_artifacts")
    client.download_artifacts(real.info.run_id, "", str(dest))

    config = yaml.safe_load((dest / "config/config.yaml").read_text())
    config["net"] = {"_target_": EVIL, "args": ["touch", str(box.path / "pwned")]}
    overrides = [*yaml.safe_load((dest / "config/overrides.yaml").read_text())]
    overrides.append(f"net._target_={EVIL}")
    forged = dest / "forged"
    (forged / "config").mkdir(parents=True)
    (forged / "config/config.yaml").write_text(yaml.safe_dump(config))
    (forged / "config/overrides.yaml").write_text(yaml.safe_dump(overrides))

    # left RUNNING, pointing at the real run's output folder: resume= would continue it
    tags = {"deepmine.output_dir": real.data.tags["deepmine.output_dir"]}
    run = client.create_run(real.info.experiment_id, tags=tags, run_name="tampered")
    client.log_artifacts(run.info.run_id, str(forged / "config"), "config")
    client.log_artifacts(run.info.run_id, str(dest / "checkpoints"), "checkpoints")
    return box, real, run.info.run_id


def _run_ids(box) -> set[str]:
    return {r.info.run_id for r in box.runs()}


def test_eval_refuses_a_tampered_recorded_config(tampered):
    box, _, run_id = tampered
    before = _run_ids(box)
    proc = run_cli("eval", *box.overrides(f"run_id={run_id}", "data=digits"), cwd=box.cwd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert "net._target_" in line and EVIL in line and "trust_recorded_targets=true" in line
    assert _run_ids(box) == before  # no eval run was created
    assert not (box.path / "pwned").exists()


def test_eval_of_the_real_run_is_accepted(tampered):
    box, real, _ = tampered
    proc = run_cli("eval", *box.overrides(f"run_id={real.info.run_id}", "data=digits"), cwd=box.cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_reproduce_run_refuses_a_tampered_run_naming_the_flag(tampered):
    box, _, run_id = tampered
    before = _run_ids(box)
    proc = run_cli("reproduce", "run", run_id, "--tracking-uri", box.uri, cwd=box.cwd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert EVIL in line and "--trust" in line
    assert _run_ids(box) == before


def test_resume_refuses_a_tampered_run(tampered):
    box, _, run_id = tampered
    proc = box.train(f"resume={run_id}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert EVIL in line and "trust_recorded_targets=true" in line
    assert not (box.path / "pwned").exists()


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deepmine.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# every group of conf/ (experiment/ included), but Hydra's own settings and per-machine files
GROUPS = sorted(
    d.name for d in CONF.iterdir() if d.is_dir() and d.name not in ("hydra", "local", "paths")
)
OPTIONS = [(group, option) for group in GROUPS for option in _options(group)]


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_the_allowlist_accepts_every_conf_option(group, option):
    cfg = _compose(f"{group}={option}")
    found = list(trust.targets(cfg))
    assert trust.refused(cfg) == []
    trust.check_targets(cfg)  # does not raise
    assert all(trust.allowed(t) for _, t in found)


def test_every_target_conf_references_is_allowed():
    known = trust.conf_targets()
    assert "lightning.pytorch.Trainer" in known and "torch.optim.Adam" in known
    assert not any(t.startswith("subprocess") for t in known)


@pytest.mark.parametrize(
    "target",
    [
        EVIL,
        "os.system",
        "builtins.eval",
        "deepmine.reproduce.subprocess.run",  # a deepmine. path reaching outside deepmine
        "torch.nn.modules.module.torch.load",
        "deepmine.no_such_module.Thing",
    ],
)
def test_targets_outside_the_allowlist_are_refused(target):
    cfg = {"net": {"_target_": target}, "callbacks": [{"_target_": "torch.nn.Linear"}]}
    with pytest.raises(DeepmineError, match=rf"net\._target_={target}.*Fix: pass --trust"):
        trust.check_targets(cfg, flag="--trust")
    trust.check_targets(cfg, trusted=True)  # the user vouches for the store


def test_prefix_targets_defined_under_the_prefix_are_allowed():
    for target in ("torch.nn.Linear", "torch.optim.SGD", "deepmine.nets.mlp.MLP"):
        assert trust.allowed(target), target
    assert trust.allowed("lightning.pytorch.callbacks.ModelCheckpoint")


def test_an_experiment_with_a_foreign_target_is_warned_about(capsys):
    trust.warn_targets({"net": {"_target_": "mypkg.Net"}}, "experiments/x.yaml")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: experiments/x.yaml sets net._target_=mypkg.Net, a target outside deepmine's "
        "allowlist"
    ]


def test_config_keys_documented():
    for name in ("train.yaml", "eval.yaml"):
        assert yaml.safe_load(Path(CONF / name).read_text())["trust_recorded_targets"] is False


def test_hydra_targets_in_recorded_overrides_are_refused():
    # absent from the composed job config, but `deepmine train` would instantiate them
    overrides = [
        "data=digits",
        f"+hydra.callbacks.x._target_={EVIL}",
        "+hydra.callbacks={y: {_target_: os.system}}",
    ]
    assert list(trust.override_targets(overrides)) == [
        ("hydra.callbacks.x._target_", EVIL),
        ("hydra.callbacks.y._target_", "os.system"),
    ]
    with pytest.raises(
        DeepmineError, match=rf"hydra\.callbacks\.x\._target_={EVIL} \(and 1 more\)"
    ):
        trust.check_targets({}, flag="--trust", overrides=overrides)
