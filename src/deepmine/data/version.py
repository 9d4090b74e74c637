"""The data version: what `data.dvc` pins, whether `data/` matches it, and how to get it back.

Everything here goes through DVC (its Python API: `Repo.data_status`, `pull`, `commit`), so the
answer is the one `dvc status` would give. The only thing DVC cannot do for us is fetch the
bytes when no DVC remote exists yet; then `pull` rebuilds them from the public sources installed on
the machine (Fashion-MNIST copied from Debian's `dataset-fashion-mnist`; `series/` written from
the statsmodels package by `series_export`, byte for byte the same on every machine) and lets
`dvc commit` prove they are the pinned bytes: if the recomputed hash differs from `data.dvc`, the
copy is refused and rolled back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deepmine.errors import DeepmineError

DVC_FILE = "data.dvc"
DATA_DIR = "data"

#: Debian packages holding folders of data/: folder -> (package, where it installs them).
DEBIAN_SOURCES = {
    "fashion_mnist": ("dataset-fashion-mnist", Path("/usr/share/datasets/fashion-mnist")),
}


@dataclass(frozen=True)
class DataPin:
    """What `data.dvc` records for `data/`."""

    md5: str
    size: int | None
    nfiles: int | None


@dataclass
class DataState:
    """How `data/` compares with its pin."""

    pin: DataPin
    present: bool
    changed: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.present and not self.changed

    def describe(self) -> str:
        if self.matches:
            return f"data/ matches data.dvc (md5 {self.pin.md5})"
        if not self.present:
            return f"data/ is missing (data.dvc pins md5 {self.pin.md5}); run `deepmine data pull`"
        return (
            f"data/ does not match data.dvc (md5 {self.pin.md5}): changed {', '.join(self.changed)}"
        )


def pull_command(root: Path, force: bool = False) -> str:
    """The `deepmine data pull` that restores `root`'s data/ (naming the root when it is not
    the project deepmine runs in by default), for the fixes that messages print."""
    from deepmine.project import project_root

    words = ["deepmine data pull"]
    if Path(root).resolve() != project_root():
        words.append(f"--root {root}")
    if force:
        words.append("--force")
    return " ".join(words)


def restore_command(path: Path) -> str:
    """The pull that restores one damaged or missing file of data/ (a local change, so
    `--force`), for the project that holds `path`."""
    path = Path(path).resolve()
    root = next((p for p in path.parents if (p / DVC_FILE).is_file()), path.parent)
    return pull_command(root, force=True)


def read_pin(root: Path) -> DataPin:
    """Parse `data.dvc` (plain YAML: no DVC import needed for this)."""
    path = root / DVC_FILE
    restore = f"restore it from git: `git -C {root} checkout -- {DVC_FILE}`"
    if not path.is_file():
        raise DeepmineError(f"{path} is missing", restore)
    try:
        out = yaml.safe_load(path.read_text())["outs"][0]
        return DataPin(md5=str(out["md5"]), size=out.get("size"), nfiles=out.get("nfiles"))
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DeepmineError(f"{path} is not a DVC pin of data/ ({reason})", restore) from exc


def _repo(root: Path):
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(str(root))
    except NotDvcRepoError as exc:
        raise DeepmineError(
            f"{root} is not a DVC repository", "run from the deepmine checkout (it holds .dvc/)"
        ) from exc


def check(root: Path) -> DataState:
    """Compare `data/` with `data.dvc`, naming every changed, added or deleted file."""
    pin = read_pin(root)
    data = root / DATA_DIR
    if not data.is_dir() or not any(data.iterdir()):
        return DataState(pin, present=False)
    with _repo(root) as repo:
        status = repo.data_status(granular=True, untracked_files="no")
    changed = []
    for kind, paths in sorted(status.get("uncommitted", {}).items()):
        changed += [f"{p} ({kind})" for p in paths if p.rstrip("/") != DATA_DIR]
    if not changed and status.get("uncommitted"):
        # DVC knows the folder changed but has no per-file manifest in its cache to say where.
        changed = [f"{DATA_DIR}/ (modified; run `dvc status` for details)"]
    return DataState(pin, present=True, changed=changed)


def pull(root: Path, force: bool = False) -> str:
    """Make `data/` match `data.dvc`: DVC remote first, then the offline public source."""
    state = check(root)
    if state.matches:
        return state.describe() + "; nothing to do"
    if state.present and not force:
        raise DeepmineError(
            f"data/ has local changes ({', '.join(state.changed)})",
            "move them away, or run `deepmine data pull --force` to overwrite them",
        )
    notes = []
    remote = _default_remote(root)
    if remote:
        try:
            with _repo(root) as repo:
                repo.pull(targets=[str(root / DVC_FILE)], force=True)
            state = check(root)
            if state.matches:
                return f"pulled data/ from DVC remote '{remote}'; " + state.describe()
            notes.append(f"remote '{remote}' gave data that does not match")
        except Exception as exc:
            notes.append(f"DVC remote '{remote}' failed: {str(exc).splitlines()[0]}")
    _fill_from_public_sources(root)
    state = check(root)
    if not state.matches:
        raise DeepmineError(f"after pulling, {state.describe()}", "report this as a bug")
    prefix = "; ".join(notes) + "; " if notes else ""
    return prefix + "filled data/ from the public source and verified it; " + state.describe()


def add_folder(root: Path, source: Path, name: str | None = None, force: bool = False) -> str:
    """Copy folder `source` into `data/<name>/` and re-pin `data/` in `data.dvc` (`dvc commit`,
    which also stores the new bytes in the DVC cache). Returns what to pass to `deepmine train`.

    Refused when `data/` is missing or already differs from its pin (the new pin would silently
    take those changes too), and when `data/<name>` exists, unless `force` replaces it. The copy
    is made beside its target and renamed into place, so a failed copy leaves data/ as it was.
    Hidden files and folders (`.DS_Store`, `.git`) are not copied: no reader uses them.
    """
    source = Path(source).expanduser().resolve()
    if not source.is_dir():
        raise DeepmineError(f"{source} is not a folder", "give the folder to add, e.g. ~/flowers")
    name = name or source.name
    if name in ("", ".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise DeepmineError(
            f"--name {name!r} is not a folder name", "give a plain name, e.g. --name flowers"
        )
    data = root / DATA_DIR
    target = data / name
    if source == target.resolve() or target.resolve().is_relative_to(source):
        raise DeepmineError(f"{source} is data/{name} itself or holds it", "add another folder")
    state = check(root)
    if not state.matches:
        raise DeepmineError(
            f"cannot add to data/: {state.describe()}",
            f"run `{pull_command(root, force=True)}` first, so the new pin holds only your folder",
        )
    if target.exists() and not force:
        raise DeepmineError(
            f"data/{name} already exists", "pick another --name, or pass --force to replace it"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".add-{name}-", dir=data))
    retired = data / f"{staging.name}-old"
    try:
        shutil.copytree(source, staging / name, ignore=shutil.ignore_patterns(".*"))
        if target.exists():
            target.rename(retired)
        (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    with _repo(root) as repo:
        # hashes data/, stores the new files in the DVC cache and rewrites data.dvc's pin
        repo.commit(str(root / DVC_FILE), force=True, relink=False)
    pin = read_pin(root)
    return (
        f"added {source} as data/{name}; data.dvc now pins md5 {pin.md5} ({pin.nfiles} files)\n"
        f"train on it with: deepmine train data=image_folder data.root=data/{name}\n"
        "then commit data.dvc to git (and `dvc push` to your DVC remote, so others can pull it)"
    )


def _default_remote(root: Path) -> str | None:
    with _repo(root) as repo:
        remotes = dict(repo.config.get("remote", {}))
        default = repo.config.get("core", {}).get("remote")
    if default:
        return default
    return next(iter(remotes), None)


def _public_source_dir(package: str, fallback: Path) -> Path:
    try:
        listing = subprocess.run(
            ["dpkg", "-L", package], capture_output=True, text=True, check=False
        )
        for line in listing.stdout.splitlines():
            if line.endswith(".gz"):
                return Path(line).parent
    except FileNotFoundError:
        pass
    if fallback.is_dir():
        return fallback
    raise DeepmineError(
        f"no DVC remote holds the data and the public source package '{package}' is not installed",
        f"run `make setup` (it installs it) or `apt-get install {package}`",
    )


def _copy_debian(folder: str, target: Path) -> None:
    package, fallback = DEBIAN_SOURCES[folder]
    shutil.copytree(_public_source_dir(package, fallback), target)


def _write_series(folder: str, target: Path) -> None:
    """`folder` is always `series`; the filler signature is shared with `_copy_debian`."""
    from deepmine.data.series_export import write_series

    write_series(target)


#: How each folder of data/ is rebuilt offline: folder -> filler(folder, target path).
PUBLIC_SOURCES = {
    "fashion_mnist": _copy_debian,
    "series": _write_series,
}


def _fill_from_public_sources(root: Path) -> None:
    """Build a complete data/ from the sources in a staging folder, swap it in, then prove it
    with `dvc commit`.

    The swap is two renames (old data/ aside, staged folder in), so data/ is missing only
    between them, never while files are being copied or written: other processes may be
    reading it.
    """
    data = root / DATA_DIR
    staging = Path(tempfile.mkdtemp(prefix=".data-", dir=root))
    retired = root / f"{staging.name}-old"
    try:
        for folder, fill in PUBLIC_SOURCES.items():
            fill(folder, staging / folder)
        if data.exists():
            data.rename(retired)
        try:
            staging.rename(data)
        except OSError:
            if retired.exists():
                retired.rename(data)  # put the old data/ back rather than lose it
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    dvc_file = root / DVC_FILE
    pinned_text, pinned = dvc_file.read_text(), read_pin(root)
    with _repo(root) as repo:
        # hashes data/ and fills the DVC cache; no relink: the files just written are the bytes
        # committed, and relinking would delete and rewrite each of them once more
        repo.commit(str(dvc_file), force=True, relink=False)
    if read_pin(root).md5 != pinned.md5:
        dvc_file.write_text(pinned_text)
        shutil.rmtree(data, ignore_errors=True)
        raise DeepmineError(
            "the public source's bytes differ from the version pinned in data.dvc; "
            "data/ was removed and data.dvc left unchanged",
            "configure the DVC remote that holds this version (`dvc remote add -d ...`)",
        )
    dvc_file.write_text(pinned_text)  # keep the file byte-identical (commit may reformat it)
