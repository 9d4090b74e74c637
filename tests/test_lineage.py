"""A run from a modified working tree is tagged dirty and carries the diff; Hydra multirun gives
one recorded run per job."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import make_dvc_project, run_cli


def git(project, *args):
    subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)


def test_dirty_tree_is_tagged_and_its_diff_logged(tmp_path, sandbox):
    project = make_dvc_project(tmp_path / "p", with_data=True)
    (project / ".gitignore").write_text("/data\n/logs\n")
    (project / "notes.txt").write_text("first line\n")
    git(project, "init", "-q")
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "start")
    (project / "notes.txt").write_text("first line\nan uncommitted change\n")

    proc = sandbox.train(f"paths.root_dir={project}", "data=digits", "debug=fast")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = sandbox.runs()
    assert run.data.tags["deepmine.git.dirty"] == "true"
    client = sandbox.client()
    diff = client.download_artifacts(run.info.run_id, "git/diff.patch", str(tmp_path))
    assert "+an uncommitted change" in Path(diff).read_text()


def test_multirun_records_one_run_per_job(sandbox):
    args = sandbox.overrides("data=digits", "debug=fast", "seed=0,1")
    proc = run_cli("train", "-m", *args, cwd=sandbox.cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [r for r in sandbox.runs() if "mlflow.parentRunId" in r.data.tags]  # + the parent
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert len(list(sandbox.logs.glob("train/multiruns/*/*/[01]/metrics.json"))) == 2


def test_pip_freeze_is_computed_once_per_environment_and_commit(tmp_path, monkeypatch):
    from deepmine.provenance import lineage

    monkeypatch.setattr(lineage, "_pip_freeze", None)
    first = lineage.start_pip_freeze(tmp_path, lineage.GitState("a" * 40, "main", False, "", ""))
    assert first._process is not None, "a cold cache runs pip"
    text = first.result()
    assert "torch==" in text
    (cached,) = tmp_path.glob("pip-freeze-*.txt")
    assert cached.read_text() == text

    monkeypatch.setattr(lineage, "_pip_freeze", None)  # a new process, same environment
    again = lineage.start_pip_freeze(tmp_path, lineage.GitState("a" * 40, "main", False, "", ""))
    assert again._process is None and again.result() == text

    monkeypatch.setattr(lineage, "_pip_freeze", None)  # another commit: an editable install
    other = lineage.start_pip_freeze(tmp_path, lineage.GitState("b" * 40, "main", False, "", ""))
    assert other._process is not None  # is listed with its commit, so pip runs again
    other.cancel()
