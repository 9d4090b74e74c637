"""`deepmine reproduce`: claims run for real (tiny settings: digits, one epoch, few batches)
into a real MLflow store, judged against their published value, and reported."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from conftest import one_line_error, run_cli

TINY = ("data=digits", "debug=fast")


def reproduce(sandbox, *args: str, **env: str):
    overrides = [a for a in args if "=" in a and not a.startswith("--")]
    flags = [a for a in args if a not in overrides]
    return run_cli(
        "reproduce", *flags, *sandbox.overrides(*TINY, *overrides), cwd=sandbox.cwd, **env
    )


def test_a_baseline_claim_is_measured_and_reported(sandbox, tmp_path):
    proc = reproduce(sandbox, "seed_article_baseline", "claim.seeds=[0,1]", "claim.published=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sandbox.runs("seed_article_baseline")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    values = [c.data.metrics["test/acc"] for c in children]
    mean = sum(values) / 2
    assert parent.data.metrics["reproduced/test/acc/mean"] == mean
    assert parent.data.metrics["reproduced/test/acc/std"] == statistics.stdev(values)
    assert parent.info.run_name == "grid seed"
    assert sorted(c.info.run_name for c in children) == ["seed=0", "seed=1"]
    assert parent.data.tags["deepmine.reproduce.verdict"].startswith("baseline measured")
    assert {
        a.path for a in sandbox.client().list_artifacts(parent.info.run_id, "reproduction")
    } >= {
        "reproduction/report.md",
        "reproduction/chart.png",
    }
    (report,) = sandbox.logs.glob("reproduce/seed_article_baseline/*/reproduction/report.md")
    text = report.read_text()
    assert f"{mean:.4f} ± " in text and "(n=2)" in text
    assert all(c.info.run_id in text for c in children)


def test_outside_tolerance_exits_nonzero_and_within_exits_zero(sandbox):
    proc = reproduce(sandbox, "fashion_mnist_logreg", "claim.seeds=[0]", "claim.published=2.0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "outside tolerance" in proc.stdout
    proc = reproduce(
        sandbox,
        "fashion_mnist_logreg",
        "claim.seeds=[0]",
        "claim.published=0.5",
        "claim.tolerance=0.5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "within tolerance" in proc.stdout


def test_all_regenerates_reproduction_md_and_keeps_rows_not_rerun(sandbox, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    env = {"DEEPMINE_ROOT": str(root)}
    proc = reproduce(
        sandbox,
        "--all",
        "--only",
        "seed_article_baseline,fashion_mnist_logreg",
        "claim.seeds=[0]",
        "claim.tolerance=1.0",
        **env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (root / "REPRODUCTION.md").read_text()
    assert "| `fashion_mnist_logreg` |" in text and "| `seed_article_baseline` |" in text
    rows = json.loads(text.split("<!-- deepmine:results ")[1].split(" -->")[0])
    first_parent = rows["fashion_mnist_logreg"]["parent_run_id"]
    proc = reproduce(
        sandbox,
        "--all",
        "--only",
        "seed_article_baseline",
        "claim.seeds=[0]",
        "claim.tolerance=1.0",
        **env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows_after = json.loads(
        (root / "REPRODUCTION.md").read_text().split("<!-- deepmine:results ")[1].split(" -->")[0]
    )
    assert rows_after["fashion_mnist_logreg"]["parent_run_id"] == first_parent
    assert (
        rows_after["seed_article_baseline"]["parent_run_id"]
        != rows["seed_article_baseline"]["parent_run_id"]
    )


def test_unknown_experiment_lists_the_available_ones(sandbox):
    proc = run_cli("reproduce", "no_such_claim", cwd=sandbox.cwd)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "unknown experiment 'no_such_claim'" in line and "fashion_mnist_logreg" in line
    assert not Path(sandbox.db).exists()


def test_a_claim_missing_a_field_names_it(sandbox):
    proc = reproduce(sandbox, "fashion_mnist_logreg", "~claim.tolerance")
    assert proc.returncode == 2
    assert "lacks tolerance" in one_line_error(proc)
    proc = reproduce(sandbox, "fashion_mnist_logreg", "claim.seeds=[]")
    assert "seeds must be a non-empty list of integers" in one_line_error(proc)
    assert sandbox.runs("fashion_mnist_logreg") == []


def test_reproduce_run_reexecutes_a_recorded_run_identically(sandbox):
    done = sandbox.train("data=digits", "debug=fast", "seed=7")
    assert done.returncode == 0, done.stderr[-3000:]
    (original,) = sandbox.runs()
    # the store named as deepmine train names it (--tracking-uri works the same)
    proc = run_cli(
        "reproduce",
        "run",
        original.info.run_id,
        f"logger.tracking_uri={sandbox.uri}",
        cwd=sandbox.cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all metrics identical: run" in proc.stdout
    again = next(r for r in sandbox.runs() if r.info.run_id != original.info.run_id)
    assert again.data.tags["reproduces"] == original.info.run_id
    assert again.data.params["seed"] == "7"
    # the same name as its original, so it sits beside it in the UI's lists and groups
    assert again.info.run_name == original.info.run_name

    def results(run) -> dict:  # the wall times (time/epoch_s) are measurements, not results
        return {k: v for k, v in run.data.metrics.items() if not k.startswith("time/")}

    assert results(again) == results(original) and "time/epoch_s" in original.data.metrics
    assert "test/acc" in proc.stdout and "identical" in proc.stdout


def test_reproduce_run_refuses_what_it_cannot_reproduce(sandbox):
    def attempt(run_id):
        return run_cli("reproduce", "run", run_id, "--tracking-uri", sandbox.uri, cwd=sandbox.cwd)

    done = sandbox.train("debug=fast")  # fashion_mnist: DVC-tracked data
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = sandbox.runs()
    client = sandbox.client()

    proc = attempt("0123456789abcdef0123456789abcdef")
    assert proc.returncode == 2 and "no MLflow run" in one_line_error(proc)
    assert "pass --tracking-uri URI" in one_line_error(proc)  # how to look in another store

    bare = client.create_run(run.info.experiment_id).info.run_id
    client.set_terminated(bare)
    proc = attempt(bare)
    assert proc.returncode == 2 and "without a config artifact" in one_line_error(proc)

    client.set_tag(run.info.run_id, "deepmine.data.md5", "00000000000000000000000000000000.dir")
    proc = attempt(run.info.run_id)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "trained on data version 00000000000000000000000000000000.dir" in line
    assert "deepmine data pull --force" in line

    client.delete_run(bare)
    proc = attempt(bare)
    assert proc.returncode == 2 and "is deleted" in one_line_error(proc)
    assert len(sandbox.runs()) == 1, "refusals start no run"


def test_comparative_claims_judge_a_bound_not_a_band():
    from deepmine.reproduce.claims import Claim

    at_least = Claim("c", "s", "skill/arima", -0.1, 0.0, [0], "at_least")
    assert at_least.holds(-0.1) and at_least.holds(0.5) and not at_least.holds(-0.11)
    assert at_least.stated() == "≥ -0.1000"
    at_most = Claim("c", "s", "test/mase", 1.0, 0.05, [0], "at_most")
    assert at_most.holds(1.05) and not at_most.holds(1.06)
    within = Claim("c", "s", "test/acc", 0.9, 0.01, [0])
    assert within.holds(0.905) and not within.holds(0.92)
    assert within.stated() == "0.9000 ± 0.01"


def test_comparative_claim_files_load_and_a_bad_kind_is_named():
    import pytest

    from deepmine.errors import DeepmineError
    from deepmine.reproduce import claims

    claim, cfg = claims.load("sunspots_mlp_beats_baselines")
    assert claim.kind == "at_least" and claim.metric == "skill/best_baseline"
    assert cfg.task._target_.endswith("ForecastingTask")
    with pytest.raises(DeepmineError, match="kind='sideways'"):
        claims.load("co2_mlp_vs_airline_arima", ["claim.kind=sideways"])


def test_a_run_name_is_replayed_exactly_as_a_hydra_override():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deepmine.reproduce.rerun import quoted

    parser = OverridesParser.create()
    for name in ["lr=0.01 seed=2", "it's", "a\\b", "ends\\", "q\\'z", "c ${x} d", "a,b", ""]:
        parsed = parser.parse_override(f"logger.run_name={quoted(name)}").value()
        assert parsed.replace("\\${", "${") == name, name
