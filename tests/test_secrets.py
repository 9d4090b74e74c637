"""Secrets never reach MLflow: a real `deepmine train` with secret overrides, then the whole
store (params, tags, every artifact's bytes, the SQLite file's bytes) is searched for them; the
same for a sweep (parent, children, summary), an evaluation and a run that fails."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import one_line_error, run_cli
from deepmine.errors import DeepmineError
from deepmine.provenance import secrets

PASSWORD = "hunter2-SECRET"
TOKEN = "tok-XYZ"


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _unique_secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def _files_holding(secret: str, *roots: Path) -> list[str]:
    """Every file under `roots` whose raw bytes contain `secret` (none is the goal)."""
    return [
        str(path)
        for root in roots
        for path in _all_files(root)
        if secret.encode() in path.read_bytes()
    ]


def _store_files(sandbox) -> list[Path]:
    """The store folder: the SQLite file (and any journal) and mlartifacts/."""
    files = _all_files(sandbox.db.parent)
    assert sandbox.db in files and any("mlartifacts" in p.parts for p in files)
    return files


def _text_artifact(client, run_id: str, path: str, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dest))).read_text()


def test_secret_overrides_are_masked_everywhere_in_the_store(sandbox, tmp_path):
    proc = sandbox.train(
        "data=digits", "debug=fast", f"+db.password={PASSWORD}", f"+api_token={TOKEN}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    client = sandbox.client()

    # resume reads the recorded overrides back: a masked one is asked for again, in one line
    run_id = run.info.run_id
    client.set_terminated(run_id, "KILLED")  # as if interrupted after its first epoch
    refused = sandbox.train(f"resume={run_id}", "trainer.max_epochs=2")
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = one_line_error(refused)
    assert "+db.password=<value>" in line and "+api_token=<value>" in line
    secrets_again = (f"+db.password={PASSWORD}", f"+api_token={TOKEN}")
    resumed = sandbox.train(f"resume={run_id}", "trainer.max_epochs=2", *secrets_again)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (run,) = sandbox.runs()
    assert "+db.password=***" in run.data.tags["deepmine.resumed.argv"]

    params, tags = run.data.params, run.data.tags
    assert params["db.password"] == secrets.MASK
    assert params["api_token"] == secrets.MASK
    for key, value in {**params, **tags}.items():
        assert PASSWORD not in value and TOKEN not in value, key
    assert f"+db.password={secrets.MASK}" in tags["deepmine.overrides"]
    assert f"+api_token={secrets.MASK}" in tags["deepmine.command"]

    dest = tmp_path / "artifacts"
    dest.mkdir()
    client.download_artifacts(run.info.run_id, "", str(dest))
    files = _all_files(dest)
    names = {p.relative_to(dest).as_posix() for p in files}
    assert {"config/config.yaml", "config/overrides.yaml", "config/hydra.yaml"} <= names
    for path in files:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and TOKEN.encode() not in data, path
    config = yaml.safe_load((dest / "config/config.yaml").read_text())
    assert config["db"]["password"] == secrets.MASK and config["api_token"] == secrets.MASK
    overrides = yaml.safe_load((dest / "config/overrides.yaml").read_text())
    assert f"+db.password={secrets.MASK}" in overrides

    # the SQLite file's raw bytes, and everything else in the store folder (artifacts, WAL)
    stored = _all_files(sandbox.db.parent)
    assert sandbox.db in stored
    for path in stored:
        raw = path.read_bytes()
        assert PASSWORD.encode() not in raw and TOKEN.encode() not in raw, path
    # and the whole output tree, Hydra's own .hydra/*.yaml included (masked, still YAML)
    hydra_files = list(sandbox.logs.rglob(".hydra/overrides.yaml"))
    assert len(hydra_files) == 3  # the run, the refused resume and the resume
    given = [yaml.safe_load(path.read_text()) for path in hydra_files]
    assert sum(f"+db.password={secrets.MASK}" in overrides for overrides in given) == 2
    assert _files_holding(PASSWORD, sandbox.logs) == []
    assert _files_holding(TOKEN, sandbox.logs) == []

    # the run trained with the real values: only the record is masked, so replaying it
    # must ask for the secrets again instead of training with `***`
    again = run_cli(
        "reproduce", "run", run.info.run_id, "--tracking-uri", sandbox.uri, cwd=sandbox.cwd
    )
    assert again.returncode == 2, again.stderr[-3000:]
    line = one_line_error(again)
    assert "db.password" in line and "api_token" in line and "masked" in line


def test_a_password_inside_a_url_is_masked_under_any_key():
    cfg = OmegaConf.create(
        {"logger": {"tracking_uri": "http://alice:hunter2-pw@127.0.0.1:5000"}, "lr": 0.1}
    )
    masked = secrets.mask_config(cfg)
    assert masked["logger"]["tracking_uri"] == "http://alice:***@127.0.0.1:5000"
    assert "hunter2-pw" in secrets.secret_values(cfg)
    assert secrets.mask_config({"uri": "sqlite:////abs/mlflow.db"}) == {
        "uri": "sqlite:////abs/mlflow.db"
    }


def test_mask_config_keys_env_values_and_embedded_values(monkeypatch):
    monkeypatch.setenv("SERVICE_TOKEN", "from-env-123")
    cfg = OmegaConf.create(
        {
            "db": {"Password": "pw-1234", "url": "pg://me:${db.Password}@host"},
            "service": {"auth": "${oc.env:SERVICE_TOKEN}"},
            "apiKey": None,
            "lr": 0.1,
        }
    )
    masked = secrets.mask_config(cfg)
    assert masked == {
        "db": {"Password": "***", "url": "pg://me:***@host"},
        "service": {"auth": "***"},
        "apiKey": None,
        "lr": 0.1,
    }
    assert cfg.db.Password == "pw-1234"  # what trains is unchanged
    assert cfg.service.auth == "from-env-123"


def test_mask_overrides_and_text():
    assert secrets.mask_overrides(
        ["+db.passwd=abcd", "lr=0.1", "+my.api_key=${oc.env:API_KEY}", "plain"]
    ) == ["+db.passwd=***", "lr=0.1", "+my.api_key=${oc.env:API_KEY}", "plain"]
    # a URL's password under any key: a sweep job cannot learn it from the sweeper's config
    assert secrets.mask_overrides(
        ["hydra.sweeper.storage=postgresql://mlflow:pw-9@127.0.0.1:5432/optuna", "u=http://a@b/"]
    ) == ["hydra.sweeper.storage=postgresql://mlflow:***@127.0.0.1:5432/optuna", "u=http://a@b/"]
    text = "task:\n- +x.secret=abcdef\n- lr=1\ndirname: +x.secret=abcdef,lr=1\n"
    assert yaml.safe_load(secrets.mask_text(text)) == {
        "task": ["+x.secret=***", "lr=1"],
        "dirname": "+x.secret=***,lr=1",
    }


def test_a_masked_override_is_replayed_only_when_given_again():
    recorded = ["data=digits", "+db.credential=***"]
    with pytest.raises(DeepmineError, match=r"db\.credential.*\+db\.credential=<value>"):
        secrets.unmasked_overrides(recorded, "r1")
    kept = secrets.unmasked_overrides(recorded, "r1", given=["+db.credential=real"])
    assert kept == ["data=digits"]


def test_a_sweep_masks_its_secrets_in_the_parent_children_and_summary(sandbox, tmp_path):
    """A grid over two learning rates, one of them the secret pasted into the wrong option:
    that job fails before its run opens with an error that echoes the value."""
    secret, url_password = _unique_secret(), _unique_secret()
    proc = run_cli(
        "train",
        "-m",
        *sandbox.overrides(
            "data=digits",
            "debug=fast",
            f"+db.password={secret}",
            f"+db.url=postgresql://me:{url_password}@db.example/app",
            f"optimizer.lr=1e-3,{secret}",
        ),
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    runs = sandbox.runs()
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    by_job = {int(r.data.tags["deepmine.sweep.job"]): r for r in runs if r is not parent}
    assert [by_job[j].info.status for j in (0, 1)] == ["FINISHED", "FAILED"]
    assert "+db.password=***" in parent.data.tags["deepmine.command"]
    assert "optimizer.lr='***'" in by_job[1].data.tags["deepmine.error"]  # masked, not dropped
    assert parent.data.params["db.password"] == secrets.MASK
    assert by_job[0].data.params["db.password"] == secrets.MASK

    client = sandbox.client()
    multirun = _text_artifact(client, parent.info.run_id, "sweep/multirun.yaml", tmp_path / "p")
    assert "+db.password=***" in multirun
    trials = _text_artifact(client, parent.info.run_id, "summary/trials.md", tmp_path / "s")
    assert "***" in trials  # the failed job's swept value and error
    # the store's bytes (SQLite file, every artifact) and the summary folder that was logged
    summary = Path(parent.data.tags["deepmine.sweep.dir"]) / "summary"
    assert (summary / "trials.md").is_file()
    assert _files_holding(secret, sandbox.db.parent, summary) == []
    assert _store_files(sandbox)
    # the whole output tree: the sweep's multirun.yaml, each job's .hydra/*.yaml and log
    assert len(list(sandbox.logs.rglob("multirun.yaml"))) == 1
    assert len(list(sandbox.logs.rglob(".hydra/hydra.yaml"))) == 2
    assert _files_holding(secret, sandbox.logs, sandbox.db.parent) == []
    assert _files_holding(url_password, sandbox.logs, sandbox.db.parent) == []
    # and the console: Hydra's launcher prints each job's overrides as it starts it
    assert "#1 : " in proc.stdout + proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert url_password not in proc.stdout + proc.stderr


def test_a_submitit_sweep_leaves_no_pickled_secret(sandbox):
    """submitit hands each job its config in a pickle (the job needs the real value): the
    pickles go once the jobs are back; the jobs' logs stay."""
    secret = _unique_secret()
    proc = run_cli(
        "train",
        "-m",
        *sandbox.overrides(
            "data=digits", "debug=fast", "launcher=submitit_local", f"+db.password={secret}"
        ),
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(sandbox.logs.rglob(".submitit/*/*_log.out"))
    assert list(sandbox.logs.rglob(".submitit/*/*.pkl")) == []
    assert _files_holding(secret, sandbox.path) == []
    assert secret not in proc.stdout + proc.stderr


def test_launcher_logs_are_masked_while_a_sweep_runs(caplog):
    """A swept secret (`+x.api_token=a,b`): each job's own value is masked by its key."""
    import logging

    launcher = logging.getLogger("hydra._internal.core_plugins.basic_launcher")
    with caplog.at_level(logging.INFO):
        with secrets.masked_logs({"pw-12345"}):
            launcher.info("\t#%d : %s", 0, "lr=0.1 +x.api_token=tok-1111 note=pw-12345")
            launcher.info("\t#1 : +db.url=postgresql\\://u\\:pw-9876@h/db")
        launcher.info("after the sweep: +x.api_token=tok-2222")
    assert caplog.messages == [
        "\t#0 : lr=0.1 +x.api_token=*** note=***",
        "\t#1 : +db.url=postgresql\\://u\\:***@h/db",
        "after the sweep: +x.api_token=tok-2222",  # the filter is gone with the block
    ]


def test_eval_masks_the_secrets_of_its_command_line_and_of_the_model_config(sandbox, tmp_path):
    secret, token = _unique_secret(), _unique_secret()
    trained = sandbox.train("data=digits", "debug=fast", f"+db.password={secret}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = sandbox.runs()
    given = (f"+db.password={secret}", f"+tags.deploy_token={token}")
    by_run = run_cli(
        "eval",
        *sandbox.overrides(f"run_id={run.info.run_id}", "data=digits", "debug=fast", *given),
        cwd=sandbox.cwd,
    )
    assert by_run.returncode == 0, by_run.stderr[-3000:]
    # a checkpoint file is described by this command's own config, secrets included
    (ckpt,) = sandbox.logs.glob("train/runs/*/*/checkpoints/epoch*.ckpt")
    by_file = run_cli(
        "eval",
        *sandbox.overrides(f"ckpt_path={ckpt}", "data=digits", "debug=fast", *given),
        cwd=sandbox.cwd,
    )
    assert by_file.returncode == 0, by_file.stderr[-3000:]

    evals = [r for r in sandbox.runs() if r.info.run_id != run.info.run_id]
    assert len(evals) == 2
    for ev in evals:
        assert "+db.password=***" in ev.data.tags["deepmine.command"]
        assert ev.data.tags["deploy_token"] == secrets.MASK
    by_file_run = next(r for r in evals if r.data.tags["deepmine.evaluated_checkpoint"])
    config = yaml.safe_load(
        _text_artifact(sandbox.client(), by_file_run.info.run_id, "config/config.yaml", tmp_path)
    )
    assert config["db"]["password"] == secrets.MASK
    assert _files_holding(secret, sandbox.db.parent) == []
    assert _files_holding(token, sandbox.db.parent) == []
    assert _store_files(sandbox)


def test_a_run_that_fails_after_it_opened_records_its_error_masked(sandbox, tmp_path):
    """The secret pasted into an option that only fails after training (no such metric):
    the error tag and the traceback artifact echo the option's value."""
    secret = _unique_secret()
    proc = sandbox.train(
        "data=digits", "debug=fast", f"+db.password={secret}", f"optimized_metric=val/{secret}"
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "was never logged" in one_line_error(proc)
    (run,) = sandbox.runs()
    assert run.info.status == "FAILED"
    assert "optimized_metric=val/*** was never logged" in run.data.tags["deepmine.error"]
    text = _text_artifact(sandbox.client(), run.info.run_id, "error/traceback.txt", tmp_path)
    assert "Traceback" in text and "val/***" in text
    assert _files_holding(secret, sandbox.db.parent) == []
    assert _store_files(sandbox)


def test_a_sweep_record_masks_its_space_rows_and_errors():
    """What the parent records from its config alone (an Optuna space holds every override)."""
    from deepmine.sweeps.record import SweepInfo, SweepRecord, task_config
    from deepmine.sweeps.summary import JobRow

    config = OmegaConf.create(
        {
            "db": {"password": "pw-12345", "url": "pg://me:${db.password}@host"},
            "optimizer": {"lr": 0.1},
            "hydra": {"overrides": {"task": ["+db.password=pw-12345", "+x.api_key=key-6789"]}},
        }
    )
    info = SweepInfo(sweep_id="s", kind="optuna", sweep_dir="unused")
    space = ["optimizer.lr=interval(0.01, 0.1)", "+db.password=pw-12345", "+x.api_key=key-6789"]
    record = SweepRecord(config, info, space)
    assert record._space() == [space[0], "+db.password=***", "+x.api_key=***"]
    assert task_config(config)["db"] == {"password": "***", "url": "pg://me:***@host"}
    row = JobRow(1, "FAILED", None, {"optimizer.lr": "key-6789", "+db.password": "pw"}, "", "")
    row.error = "ValueError: cannot log in with pw-12345"
    masked = record._masked_row(row)
    assert masked.params == {"optimizer.lr": "***", "+db.password": "***"}
    assert masked.error == "ValueError: cannot log in with ***"


def test_optuna_refuses_to_search_a_secret_key_before_its_study_exists(sandbox):
    """Optuna's storage would keep the values in clear (a categorical's choices are in its
    distribution's JSON): the search is refused in one line, no study, no run, no file holds
    the secret."""
    secret = _unique_secret()
    proc = run_cli(
        "train",
        "-m",
        *sandbox.overrides(
            "hparams_search=fashion_mnist_optuna",
            "data=digits",
            "debug=fast",
            f"+db.password=choice({secret},{secret}-2)",
        ),
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line_error(proc)
    assert "db.password cannot be searched by Optuna" in line and "hparams_search=grid" in line
    assert secret not in proc.stderr + proc.stdout
    assert sandbox.runs("fashion_mnist_optuna") == []
    assert _files_holding(secret, sandbox.path) == []


def test_a_secret_with_one_value_is_not_part_of_an_optuna_space():
    """A fixed secret goes to every trial on its command line, never into the study."""
    from deepmine.sweeps.optuna_search import _refuse_secret_keys
    from deepmine.sweeps.space import parse

    space = parse(["optimizer.lr=interval(0.01, 0.1)", "+db.password=pw-12345"])
    _refuse_secret_keys(space)  # accepted
    assert list(space.distributions) == ["optimizer.lr"]
    with pytest.raises(DeepmineError, match="api_key cannot be searched by Optuna"):
        _refuse_secret_keys(parse(["+x.api_key=range(1, 3)"]))
