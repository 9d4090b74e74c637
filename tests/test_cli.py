"""The CLI entry points answer, and bad commands fail in one line."""

from conftest import ROOT, run_cli


def test_help_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("train", "eval", "data pull", "data status", "ui", "sync"):
        assert command in proc.stdout


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, deepmine.cli; deepmine.cli.main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().endswith("False")


def test_an_unknown_command_gets_the_nearest_one_or_the_help(tmp_path):
    proc = run_cli("frobnicate", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown command 'frobnicate'. Fix: run `deepmine --help` for the commands"
    )
    assert run_cli("--help", cwd=tmp_path).returncode == 0
    near = run_cli("trian", "data=digits", cwd=tmp_path)
    assert near.returncode == 2
    assert near.stderr.strip() == (
        "error: unknown command 'trian'. Fix: e.g. `deepmine train data=digits`, or see "
        "`deepmine --help`"
    )


def test_hydra_cfg_job_prints_resolved_groups(tmp_path):
    proc = run_cli("train", "net=cnn", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "deepmine.nets.cnn.SmallCNN" in proc.stdout
    assert list(tmp_path.iterdir()) == [], "nothing may be written into the current directory"


def test_python_dash_m_deepmine_is_the_one_door(tmp_path):
    """`python -m deepmine <command>` is the same door as the `deepmine` script (the command
    modules have no `__main__` blocks of their own)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "deepmine", "train", "data=digits", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DigitsDataModule" in proc.stdout


def test_every_command_names_its_store_the_same_ways_with_one_precedence():
    """--tracking-uri > logger.tracking_uri= > MLFLOW_TRACKING_URI > the project's store: Hydra
    commands get the override, the others the flag, and the flag wins over the override."""
    from deepmine.cli import _one_store_option

    uri, other = "sqlite:////s/a.db", "sqlite:////s/b.db"
    assert _one_store_option("train", ["--tracking-uri", uri, "seed=1"]) == [
        "seed=1",
        f"logger.tracking_uri={uri}",
    ]
    assert _one_store_option("eval", [f"--tracking-uri={uri}", f"logger.tracking_uri={other}"]) == [
        f"logger.tracking_uri={uri}"
    ]
    assert _one_store_option("reproduce", ["x", "--tracking-uri", uri]) == [
        "x",
        f"logger.tracking_uri={uri}",
    ]
    for command, args in (
        ("reproduce", ["run", "abc", f"logger.tracking_uri={uri}"]),
        ("ui", [f"+logger.tracking_uri={uri}"]),
        ("runs", ["doctor", f"logger.tracking_uri={uri}"]),
        ("compare", [f"logger.tracking_uri={uri}"]),
    ):
        assert _one_store_option(command, args)[-2:] == ["--tracking-uri", uri], command
    assert _one_store_option("train", ["seed=1"]) == ["seed=1"]  # env/project default apply


def test_train_takes_the_store_flag(tmp_path):
    proc = run_cli(
        "train", "--tracking-uri", "sqlite:////tmp/flag.db", "--cfg", "job", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "tracking_uri: sqlite:////tmp/flag.db" in proc.stdout
    missing = run_cli("runs", "--tracking-uri", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "error: --tracking-uri needs a value. Fix: e.g. --tracking-uri sqlite:///mlflow.db"
    )
