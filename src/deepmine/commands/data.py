"""`deepmine data pull|status|add|export-images|synth`: the DVC-versioned data/ folder."""

from __future__ import annotations

from deepmine.errors import EXIT_FAILED


def run(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="deepmine data", description="DVC-versioned data/")
    parser.add_argument("action", choices=["pull", "status", "add", "export-images", "synth"])
    parser.add_argument(
        "args",
        nargs="*",
        help="add: <folder>; export-images: <data config> <out dir> [data.key=value ...]; "
        "synth: fashion_mnist",
    )
    parser.add_argument("--root", help="project root (default: this checkout)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="pull: overwrite local changes in data/; add: replace data/NAME",
    )
    parser.add_argument("--name", help="add: the folder's name under data/ (default: its own)")
    parser.add_argument(
        "--scale", type=int, default=4, help="synth: how many times the training split (default 4)"
    )
    parser.add_argument("--split", default="test", help="export-images: train, val or test")
    parser.add_argument(
        "--per-class", type=int, help="export-images: at most this many images per class"
    )
    ns = parser.parse_args(args)
    from pathlib import Path

    from deepmine.data import version
    from deepmine.errors import DeepmineError
    from deepmine.project import project_root

    needed = {
        "pull": (0, 0),
        "status": (0, 0),
        "add": (1, 1),
        "export-images": (2, None),
        "synth": (1, 1),
    }
    low, high = needed[ns.action]
    if len(ns.args) < low or (high is not None and len(ns.args) > high):
        usage = {
            "pull": "deepmine data pull [--force]",
            "status": "deepmine data status",
            "add": "deepmine data add <folder> [--name NAME]",
            "export-images": "deepmine data export-images <data config> <out dir>",
            "synth": "deepmine data synth fashion_mnist --scale N [--name NAME]",
        }[ns.action]
        raise DeepmineError(f"data {ns.action} got arguments {ns.args}", f"run it as `{usage}`")
    if ns.action == "export-images":
        from deepmine.data.image_export import compose_data, export_images

        data, out_dir, *overrides = ns.args
        written = export_images(
            compose_data(data, overrides), ns.split, Path(out_dir), ns.per_class
        )
        out = Path(out_dir).resolve()
        print(f"wrote {sum(written.values())} PNGs in {len(written)} class folders under {out}")
        print(f"train on them with: deepmine train data=image_folder data.root={out}")
        return 0
    root = Path(ns.root).resolve() if ns.root else project_root()
    if ns.action == "add":
        print(version.add_folder(root, Path(ns.args[0]), ns.name, force=ns.force))
        return 0
    if ns.action == "synth":
        from deepmine.data.synth import synth

        print(synth(root, ns.args[0], ns.scale, ns.name, force=ns.force))
        return 0
    if ns.action == "pull":
        print(version.pull(root, force=ns.force))
        return 0
    state = version.check(root)
    print(state.describe())
    return 0 if state.matches else EXIT_FAILED
