"""The CLI entry points answer, and bad commands fail in one line."""

from conftest import ROOT, run_cli


def test_help_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for command in ("train", "eval", "data pull", "data status", "ui"):
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


def test_python_dash_m_train_module_works(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "deepmine.train", "data=digits", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "DigitsDataModule" in proc.stdout
