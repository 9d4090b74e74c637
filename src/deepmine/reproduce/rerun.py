"""`deepmine reproduce run <run id>`: re-execute a recorded run from what MLflow holds (its
overrides, seed and data version; its git commit in a worktree with `--checkout`) and diff every
final metric against the original."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deepmine.errors import DeepmineError
from deepmine.project import project_root
from deepmine.provenance.secrets import mask_overrides


@dataclass
class RunCheck:
    """What differs between a recorded run's origin and this checkout."""

    warnings: list[str] = field(default_factory=list)
    version_diffs: list[tuple[str, str, str]] = field(default_factory=list)  # pkg, then, now


def reproduce_run(
    run_id: str, tracking_uri: str | None, checkout: bool, trust: bool = False
) -> bool:
    """Re-execute recorded run `run_id` from what MLflow holds and compare every final metric;
    True when all are identical. The recorded overrides are untrusted: their composed config's
    `_target_`s are checked (`provenance.trust`) unless `trust`; a masked secret is refused."""
    import tempfile

    from deepmine.config import compose_train
    from deepmine.provenance.trust import check_targets
    from deepmine.tracking.fetch import get_run, recorded_overrides
    from deepmine.tracking.store import connect
    from deepmine.tracking.ui import default_tracking_uri

    root = project_root()
    store = connect(tracking_uri or default_tracking_uri())
    run = get_run(store, run_id, example=lambda i: f"`deepmine reproduce run {i}`")
    names = {a.path for a in store.client.list_artifacts(run_id, "config")}
    if "config/config.yaml" not in names:
        raise DeepmineError(
            f"run {run_id} was recorded without a config artifact (config/config.yaml)",
            "only runs recorded by deepmine train can be re-executed",
        )
    with tempfile.TemporaryDirectory() as tmp:
        overrides = recorded_overrides(
            store,
            run_id,
            Path(tmp),
            fix="`deepmine reproduce run` cannot take it: run `deepmine train` with the run's "
            "overrides (tag deepmine.overrides) and that key set again",
        )
    check_targets(compose_train(overrides), trusted=trust, flag="--trust", overrides=overrides)
    tags = run.data.tags
    check = _check_origin(tags, root, checkout)
    for line in check.warnings:
        print(f"warning: {line}", flush=True)
    if check.version_diffs:
        print("package versions differ from the run's:", flush=True)
        for name, then, now in check.version_diffs:
            print(f"  {name:14} {then:>14} -> {now}", flush=True)
    command = [
        "train",
        *overrides,
        f"logger.tracking_uri={store.uri}",
        # the original's name, so the re-run sits beside it in the UI's lists and groups (its
        # own overrides differ, which would give it another `<net>-<data>-<hash>`)
        *([f"logger.run_name={quoted(run.info.run_name)}"] if run.info.run_name else []),
        f"+tags.reproduces={run_id}",
    ]
    print(f"re-running  deepmine {' '.join(mask_overrides(command))}", flush=True)
    env = None
    with contextlib.ExitStack() as stack:
        if checkout:
            commit = tags.get("deepmine.git.commit", "unknown")
            worktree = stack.enter_context(_worktree(root, commit))
            env = {**os.environ, "PYTHONPATH": str(worktree / "src"), "DEEPMINE_ROOT": str(root)}
            print(f"checked out {commit} in {worktree}", flush=True)
        done = subprocess.run([sys.executable, "-m", "deepmine", *command], env=env, check=False)
    if done.returncode != 0:
        raise DeepmineError(
            f"the re-run of {run_id} failed (exit {done.returncode})", "see its error above"
        )
    again = store.client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.reproduces = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    return _print_metric_diff(run, again)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value, read back exactly as it is (spaces, `=`,
    quotes; `${` is not an interpolation in a run name)."""
    import re

    # Hydra reads a backslash as an escape only before a quote (or the closing quote)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped.replace("${", "\\${") + "'"


def _check_origin(tags: dict, root: Path, checkout: bool) -> RunCheck:
    from deepmine.data.version import DVC_FILE, check, pull_command, read_pin
    from deepmine.provenance.lineage import git_state, package_versions

    result = RunCheck()
    commit = tags.get("deepmine.git.commit", "unknown")
    if not checkout:
        git = git_state(root)
        if git.commit != commit or git.dirty:
            state = f"{git.commit or 'no commit'}{' (dirty)' if git.dirty else ''}"
            result.warnings.append(
                f"the run was recorded at commit {commit}; this tree is at {state}: results "
                "may differ (--checkout runs the recorded commit in a git worktree)"
            )
    if tags.get("deepmine.data.dvc_tracked") == "true":
        recorded = tags.get("deepmine.data.md5", "unknown")
        pinned = read_pin(root).md5 if (root / DVC_FILE).is_file() else "none"
        if recorded != pinned:
            raise DeepmineError(
                f"the run trained on data version {recorded}; data.dvc pins {pinned}",
                f"restore that version: `git -C {root} checkout {commit} -- data.dvc`, then "
                f"`{pull_command(root, force=True)}`, then re-run",
            )
        state = check(root)
        if not state.matches:
            raise DeepmineError(
                "data/ does not match data.dvc", f"run `{pull_command(root, force=True)}` first"
            )
    now = package_versions()
    for name, version in sorted(now.items()):
        then = tags.get(f"deepmine.version.{name}")
        if then is not None and then != version and name != "deepmine":
            result.version_diffs.append((name, then, version))
    threads = tags.get("deepmine.torch.num_threads")
    if threads:
        import torch

        here = torch.get_num_threads()
        if threads != str(here):
            result.warnings.append(
                f"the run used {threads} torch threads, this machine gives {here}: float sums "
                "may differ in the last digits"
            )
    return result


@contextlib.contextmanager
def _worktree(root: Path, commit: str):
    import tempfile

    if commit == "unknown":
        raise DeepmineError("the run recorded no git commit", "re-run it without --checkout")
    with tempfile.TemporaryDirectory(prefix="deepmine-reproduce-") as tmp:
        path = Path(tmp) / commit[:12]
        added = subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", str(path), commit],
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise DeepmineError(
                f"cannot check out commit {commit}: {added.stderr.strip().splitlines()[-1:]}",
                "fetch the commit (git fetch) or re-run without --checkout",
            )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(root), "worktree", "remove", "--force", str(path)],
                capture_output=True,
                check=False,
            )


def _print_metric_diff(original, again) -> bool:
    before, after = original.data.metrics, again.data.metrics
    keys = sorted(set(before) | set(after))
    identical = True
    lines = [
        f"{'metric':24} {'original':>12} {'reproduced':>12} {'difference':>12}",
    ]
    for key in keys:
        a, b = before.get(key), after.get(key)
        same = a == b
        # wall times (time/epoch_s) measure the machine at that moment, not the result
        timing = key.startswith("time/")
        identical &= same or timing
        diff = "identical" if same else ("missing" if a is None or b is None else f"{b - a:+.3g}")
        if timing and not same:
            diff = "timing"
        shown = [f"{v:12.6f}" if v is not None else f"{'-':>12}" for v in (a, b)]
        lines.append(f"{key:24} {shown[0]} {shown[1]} {diff:>12}")
    print("\n".join(lines), flush=True)
    verdict = "all metrics identical" if identical else "metrics differ"
    print(f"{verdict}: run {again.info.run_id} re-ran {original.info.run_id}", flush=True)
    return identical
