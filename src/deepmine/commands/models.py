"""`deepmine models promote|list`: the model registry as users use it, with MLflow aliases
(`champion`, `challenger`, ...), which replace the deprecated stages. A run registers its model
with `logger.register=<name>`; `deepmine predict model=models:/<name>@<alias>` scores with
whichever version the alias points at."""

from __future__ import annotations


def run(args: list[str]) -> int:
    import argparse

    from deepmine.tracking import model_source
    from deepmine.tracking.store import connect
    from deepmine.tracking.ui import default_tracking_uri

    parser = argparse.ArgumentParser(prog="deepmine models", description=__doc__.split("\n")[0])
    actions = parser.add_subparsers(dest="action", required=True)
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--alias", required=True, help="e.g. champion")
    listing = actions.add_parser("list", help="versions of a registered model, with aliases")
    listing.add_argument("name")
    for sub in (promote, listing):
        sub.add_argument("--tracking-uri", help="default: logger.tracking_uri of conf/")
    ns = parser.parse_args(args)
    store = connect(ns.tracking_uri or default_tracking_uri())
    if ns.action == "promote":
        model_source.promote(store, ns.name, ns.version, ns.alias)
        print(f"models:/{ns.name}@{ns.alias} -> version {ns.version}")
        return 0
    for row in model_source.versions(store, ns.name):
        aliases = f"  @{', @'.join(row['aliases'])}" if row["aliases"] else ""
        print(f"version {row['version']}  run {row['run_id']}{aliases}")
    return 0
