"""The data a run trained on, as MLflow datasets: what the UI's "Datasets used" column shows.

One dataset per split, with MLflow's context tag `training`, `validation` or `test`. Its name is
the data config (`fashion_mnist`), its source says where the bytes are (the DVC path relative
to the project, `data.dvc` and the DVC remote; or the user's own file or folder), and its
digest reads `<data version>-<split>`:

- the data version is the first 8 characters of DVC's md5 of `data/` (as pinned in
  `data.dvc`; the run's tag `deepmine.data.md5` holds all of it), of a file's MD5 or of a
  folder's content hash outside `data/`, or, for the small sets bundled with scikit-learn, of
  the arrays themselves;
- the split part is a hash of the split's name, its row count and the data config that cuts it
  (`val_size`, `split_seed`, `lookback`, ...; not batch sizes, shuffling or augmentation).

Why not the bare DVC md5 as the digest: MLflow keeps one dataset per (name, digest) in an
experiment, so three splits with one digest collapse into one, and the first run's row counts
would be shown for every later run with another `val_size`. Filter the UI on
`dataset.digest LIKE 'cf541e6d%'` for every run on one data version.

Nothing reads the data again for this: shapes and row counts come from the tensors in memory;
only bundled sets, which are tiny, are hashed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: deepmine's split names -> MLflow's dataset contexts
CONTEXTS = {"train": "training", "val": "validation", "test": "test"}

#: data config keys that do not change which rows a split holds or what they contain
# `storage`: memory or memory-mapped, the same rows bit for bit
NOT_SPLIT_KEYS = (
    "batch_size",
    "eval_batch_size",
    "shuffle_seed",
    "augment",
    "cache_dir",
    "storage",
)

#: the tags of a file or folder outside data/ (`run.checks._user_file`, `_user_folder`): path, hash
USER_DATA_TAGS = (
    ("deepmine.data.csv.path", "deepmine.data.csv.md5"),
    ("deepmine.data.image_folder.root", "deepmine.data.image_folder.hash"),
)

#: MLflow stores a digest in 36 characters (VARCHAR(36) on PostgreSQL)
MAX_DIGEST = 36


@dataclass(frozen=True)
class DataSource:
    """Where a run's data came from: `version` identifies the bytes, `source` (JSON for
    MLflow) says where they are."""

    version: str
    source_type: str
    source: dict


def data_source(
    data_cfg: Mapping, tags: Mapping[str, str], root: Path, tensors: Mapping
) -> DataSource:
    """The source of the data described by `data_cfg` (the run's data config) and the data
    tags `deepmine train` computed while checking it (`run.checks.verify_data`)."""
    where = data_cfg.get("path") or data_cfg.get("root") or data_cfg.get("data_dir")
    if tags.get("deepmine.data.dvc_tracked") == "true" and tags.get("deepmine.data.md5"):
        source = {"uri": _relative(where, root) if where else "data", "dvc_file": "data.dvc"}
        source["dvc_md5"] = tags["deepmine.data.md5"]
        remote = dvc_remote_url(root)
        if remote:
            source["dvc_remote"] = remote
        return DataSource(tags["deepmine.data.md5"], "local", source)
    for path_tag, hash_tag in USER_DATA_TAGS:
        if tags.get(path_tag) and tags.get(hash_tag):
            source = {"uri": tags[path_tag], "content_hash": tags[hash_tag]}
            return DataSource(tags[hash_tag], "local", source)
    # a set bundled with a Python package (scikit-learn's digits): small, so hashed here
    digest = hashlib.md5()
    for split in sorted(tensors):
        for tensor in tensors[split]:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    module = str(data_cfg.get("_target_", ""))
    return DataSource(digest.hexdigest(), "code", {"tags": {"deepmine.data.module": module}})


def _relative(path: str, root: Path) -> str:
    resolved = Path(path).resolve()
    root = root.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(path)


def dvc_remote_url(root: Path) -> str | None:
    """The URL of the project's default DVC remote (the first one when none is the default),
    a password written into it masked; None without remotes. Reads DVC's config files only."""
    from dvc.config import Config

    from deepmine.provenance.secrets import MASK

    try:
        config = Config(dvc_dir=str(root / ".dvc"))
    except Exception:  # an unreadable DVC config is `deepmine data`'s to report, not the run's
        return None
    remotes = dict(config.get("remote", {}))
    name = config.get("core", {}).get("remote") or next(iter(remotes), None)
    url = str(remotes.get(name, {}).get("url", "")) if name else ""
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        url = parts._replace(
            netloc=parts.netloc.replace(f":{parts.password}@", f":{MASK}@")
        ).geturl()
    return url


def dataset_inputs(name: str, data: DataSource, params: Mapping[str, str], tensors: Mapping):
    """MLflow `DatasetInput`s, one per split in `tensors` (split -> (x, y)); `params` are the
    run's logged params (`data.*` of them define the split)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    cut = {k: v for k, v in params.items() if k.startswith("data.") and k[5:] not in NOT_SPLIT_KEYS}
    inputs = []
    for split, context in CONTEXTS.items():
        if split not in tensors:
            continue
        x, y = tensors[split]
        split_id = json.dumps({"split": split, "rows": len(x), "config": cut}, sort_keys=True)
        digest = f"{data.version[:8]}-{hashlib.md5(split_id.encode()).hexdigest()[:8]}"
        dataset = Dataset(
            name=name,
            digest=digest[:MAX_DIGEST],
            source_type=data.source_type,
            source=json.dumps(data.source),
            schema=_schema(x, y),
            profile=json.dumps(
                {
                    "num_rows": len(x),
                    "features_shape": list(x.shape),
                    "targets_shape": list(y.shape),
                    "data_version": data.version,
                }
            ),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return inputs


def _schema(x, y) -> str:
    """The tensor schema MLflow's UI shows as an array data source: dtype and shape of one
    batch of features and targets (the batch axis is -1)."""
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.types import Schema, TensorSpec

    def spec(tensor):
        array = tensor[:0].detach().cpu().numpy()  # no copy of the data: an empty view
        return Schema([TensorSpec(array.dtype, (-1, *tensor.shape[1:]))])

    return json.dumps(TensorDatasetSchema(features=spec(x), targets=spec(y)).to_dict())


def log_datasets(run, name: str, data: DataSource, tensors: Mapping, attempts: int = 3) -> None:
    """Record the splits of `tensors` as the run's input datasets.

    Retried: MLflow looks a dataset up by (experiment, name, digest) and inserts it when
    missing, so on a PostgreSQL store two parallel jobs of one sweep on the same data can both
    insert it; the loser's write fails on the key, and its next attempt finds the dataset
    there. (SQLite serializes the two: 18 simultaneous jobs here never collided.)"""
    from mlflow.exceptions import MlflowException

    inputs = dataset_inputs(name, data, run.params, tensors)
    for attempt in range(attempts):
        try:
            if inputs:
                run.client.log_inputs(run.run_id, datasets=inputs)
            return
        except MlflowException:
            if attempt == attempts - 1:
                raise


def log_prediction_input(run, name: str, source: str, md5: str, profile: dict, model_id: str):
    """Record what a prediction run scored: the input as a dataset with context `prediction`
    (digest: its MD5, so the same bytes are one dataset however often they are scored) and the
    logged model it was scored with as the run's model input (MLflow links the two pages)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = Dataset(
        name=name,
        digest=md5[:MAX_DIGEST],
        source_type="local",
        source=json.dumps({"uri": source}),
        profile=json.dumps({**profile, "md5": md5}),
    )
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, "prediction")]
    run.client.log_inputs(
        run.run_id,
        datasets=[DatasetInput(dataset, tags=tags)],
        models=[LoggedModelInput(model_id)] if model_id else None,
    )
