"""DVC data versioning for real: the pull round trip through a local remote, the series files
rebuilt byte for byte from statsmodels, and a run on data that differs from data.dvc, allowed
explicitly and tagged. (Runs refused when data/ is missing or differs are in the bad-input
battery, tests/test_bad_input.py, which also follows the fix they print.)"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import pytest

from conftest import DEBIAN_SOURCE, ROOT, make_dvc_project, one_line_error, run_cli
from deepmine.data.series_export import SERIES, series_text
from deepmine.data.version import read_pin

FILES = sorted(p.name for p in (ROOT / "data" / "fashion_mnist").iterdir())
SERIES_FILES = sorted(f"{name}.csv" for name in SERIES)


def dvc(project, *args):
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )


def assert_same_bytes(project):
    """data/ holds exactly the public sources: Fashion-MNIST as Debian ships it, the series as
    statsmodels' data written by `series_export`."""
    data = project / "data"
    assert sorted(p.name for p in data.iterdir()) == ["fashion_mnist", "series"]
    for name in FILES:
        got = (data / "fashion_mnist" / name).read_bytes()
        assert got == (DEBIAN_SOURCE / name).read_bytes(), name
    assert sorted(p.name for p in (data / "series").iterdir()) == SERIES_FILES
    for name in SERIES:
        assert (data / "series" / f"{name}.csv").read_text() == series_text(name), name


def test_pull_round_trip_through_a_local_dvc_remote(tmp_path):
    project = make_dvc_project(tmp_path / "project", with_data=False)
    pinned = (project / "data.dvc").read_text()

    # No remote: filled from the public source, verified, DVC cache filled.
    first = run_cli("data", "pull", "--root", str(project), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "filled data/ from the public source" in first.stdout
    assert_same_bytes(project)
    assert (project / "data.dvc").read_text() == pinned
    assert "up to date" in dvc(project, "status").stdout.lower()

    # Push to a local remote, lose data/ and the cache, pull back from the remote.
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-d", "local", str(remote))
    dvc(project, "push", "-q")
    assert any(remote.rglob("*")), "push wrote nothing"
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    second = run_cli("data", "pull", "--root", str(project), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "pulled data/ from DVC remote 'local'" in second.stdout
    assert_same_bytes(project)
    assert (project / "data.dvc").read_text() == pinned
    status = run_cli("data", "status", "--root", str(project), cwd=tmp_path)
    assert status.returncode == 0 and "matches data.dvc" in status.stdout


def test_series_pulled_in_two_fresh_projects_are_byte_identical_and_pinned(tmp_path):
    """The series are generated, not copied: only if two machines write the same bytes can
    `dvc commit` prove them against data.dvc. Two fresh projects stand for two machines."""
    pulled = []
    for name in ("one", "two"):
        project = make_dvc_project(tmp_path / name, with_data=False)
        proc = run_cli("data", "pull", "--root", str(project), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert (project / "data.dvc").read_bytes() == (ROOT / "data.dvc").read_bytes()
        status = run_cli("data", "status", "--root", str(project), cwd=tmp_path)
        assert status.returncode == 0 and "matches data.dvc" in status.stdout
        pulled.append({f: (project / "data" / "series" / f).read_bytes() for f in SERIES_FILES})
    assert pulled[0] == pulled[1]
    assert pulled[0] == {f: (ROOT / "data" / "series" / f).read_bytes() for f in SERIES_FILES}


def test_pull_refuses_to_overwrite_local_changes_without_force(tmp_path):
    project = make_dvc_project(tmp_path / "p", with_data=True)
    target = project / "data" / "fashion_mnist" / FILES[0]
    target.write_bytes(b"local edit")
    proc = run_cli("data", "pull", "--root", str(project), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{FILES[0]} (modified)" in one_line_error(proc) and "--force" in proc.stderr
    assert target.read_bytes() == b"local edit"
    # the fix it prints works: the pinned bytes come back and data/ matches data.dvc again
    forced = run_cli("data", "pull", "--root", str(project), "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert_same_bytes(project)
    status = run_cli("data", "status", "--root", str(project), cwd=tmp_path)
    assert status.returncode == 0 and "matches data.dvc" in status.stdout


def test_public_source_with_other_bytes_is_refused_and_rolled_back(tmp_path):
    project = make_dvc_project(tmp_path / "p", with_data=False)
    dvc_file = project / "data.dvc"
    pinned_md5 = read_pin(project).md5.removesuffix(".dir")
    forged = dvc_file.read_text().replace(pinned_md5, "0" * 32)
    assert forged != dvc_file.read_text(), "test assumes the pinned md5 of data.dvc"
    dvc_file.write_text(forged)
    proc = run_cli("data", "pull", "--root", str(project), cwd=tmp_path)
    assert proc.returncode == 2
    assert "differ from the version pinned in data.dvc" in one_line_error(proc)
    assert dvc_file.read_text() == forged and not (project / "data").exists()


@pytest.fixture
def modified_project(tmp_path):
    """Valid IDX data that differs from the pinned bytes: three test labels changed."""
    project = make_dvc_project(tmp_path / "p", with_data=True)
    labels = project / "data" / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8:11] = bytes((b + 1) % 10 for b in raw[8:11])
    labels.write_bytes(gzip.compress(bytes(raw)))
    return project


def test_modified_data_allowed_explicitly_is_tagged(modified_project, sandbox):
    proc = sandbox.train(
        f"paths.root_dir={modified_project}", "debug=fast", "allow_data_mismatch=true"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = sandbox.runs()
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["deepmine.data.matches"] == "false"
    assert tags["deepmine.data.mismatch_allowed"] == "true"
    assert "t10k-labels-idx1-ubyte.gz" in tags["deepmine.data.changed"]
