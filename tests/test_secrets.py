"""Secrets never reach MLflow: a real `deepmine train` with secret overrides, then the whole
store (params, tags, every artifact's bytes, the SQLite file's bytes) is searched for them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import one_line_error, run_cli
from deepmine import secrets
from deepmine.errors import DeepmineError

PASSWORD = "hunter2-SECRET"
TOKEN = "tok-XYZ"


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


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

    # the run trained with the real values: only the record is masked, so replaying it
    # must ask for the secrets again instead of training with `***`
    again = run_cli(
        "reproduce", "run", run.info.run_id, "--tracking-uri", sandbox.uri, cwd=sandbox.cwd
    )
    assert again.returncode == 2, again.stderr[-3000:]
    line = one_line_error(again)
    assert "db.password" in line and "api_token" in line and "masked" in line


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
