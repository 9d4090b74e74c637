"""Scoring a file or folder in bounded memory: the input read in chunks, each chunk scored by a
loaded model, the predictions appended to a temporary file renamed into place at the end.

- Inputs (`InputReader`): a CSV (pandas, `chunk_rows` rows at a time), a Parquet file
  (pyarrow, record batches), a folder of images (the paths, `chunk_rows` at a time), one image
  file, a CSV listing image files in a `path` column, or a series CSV for a forecasting model
  (read whole: a forecast reads the series' end). A CSV's delimiter is guessed from its head
  as training's `data.sep=auto` does (`deepmine.data.csv_sep`), so a semicolon table scores
  as it trained, and a model trained on one table scores the same rows in the other format.
- Outputs (`OutputWriter`): CSV or Parquet, written to `<name>.partial-<pid>` beside the
  target and renamed over it only when every chunk is in, so an interrupted or failed scoring
  never leaves a file that looks complete (and an older complete file stays as it was).

Memory is one chunk's raw rows, their encoding and predictions, whatever the input's size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from deepmine.data.csv_sep import guess_file
from deepmine.errors import DeepmineError

FORMATS = ("csv", "parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Chunk:
    frame: pd.DataFrame  # the raw rows as the model takes them
    ids: pd.DataFrame  # what identifies each row in the output (`row` or `path`)
    done: float  # share of the input read so far, for the progress bar


class InputReader:
    """The chunks of `path` for a model whose input kind is `kind` (table, image, series)."""

    def __init__(self, path: Path, kind: str, chunk_rows: int):
        if not path.exists():
            raise DeepmineError(f"input {path} does not exist", "point input= at a file or folder")
        if chunk_rows < 1:
            raise DeepmineError(
                f"chunk_rows={chunk_rows} is not positive", "e.g. chunk_rows=100000"
            )
        self.path, self.kind, self.chunk_rows = path, kind, chunk_rows
        if path.is_dir() and kind != "image":
            raise DeepmineError(
                f"input {path} is a folder, and this model reads a {kind}",
                "point input= at a CSV or Parquet file",
            )

    def chunks(self) -> Iterator[Chunk]:
        if self.path.is_dir():
            yield from self._images()
        elif self.kind == "image" and self.path.suffix.lower() in IMAGE_SUFFIXES:
            frame = pd.DataFrame({"path": [str(self.path)]})  # one image file
            yield Chunk(frame, frame.copy(), 1.0)
        elif self.kind == "series":
            frame = self._read_whole()
            yield Chunk(frame, pd.DataFrame(index=range(0)), 1.0)
        elif self.path.suffix.lower() == ".parquet":
            yield from self._parquet()
        elif self.kind == "image":
            yield from self._listed_images()
        else:
            yield from self._csv()

    def _csv(self) -> Iterator[Chunk]:
        size = max(self.path.stat().st_size, 1)
        with self.path.open("rb") as handle:
            try:
                sep = guess_file(self.path)
                for frame in pd.read_csv(handle, sep=sep, chunksize=self.chunk_rows):
                    ids = pd.DataFrame({"row": frame.index.to_numpy()})
                    yield Chunk(frame, ids, min(handle.tell() / size, 1.0))
            except (pd.errors.ParserError, UnicodeDecodeError) as exc:
                raise _unreadable(self.path, exc) from None
            except pd.errors.EmptyDataError:
                raise DeepmineError(
                    f"input {self.path} is empty", "pass a CSV with a header"
                ) from None

    def _parquet(self) -> Iterator[Chunk]:
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise _unreadable(self.path, exc) from None
        total, start = max(handle.metadata.num_rows, 1), 0
        for batch in handle.iter_batches(batch_size=self.chunk_rows):
            frame = batch.to_pandas()
            frame.index = range(start, start + len(frame))
            start += len(frame)
            yield Chunk(frame, pd.DataFrame({"row": frame.index.to_numpy()}), start / total)

    def _images(self) -> Iterator[Chunk]:
        files = sorted(
            p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DeepmineError(
                f"input folder {self.path} has no PNG or JPEG images",
                "point input= at a folder of images (subfolders count too)",
            )
        for start in range(0, len(files), self.chunk_rows):
            paths = [str(p) for p in files[start : start + self.chunk_rows]]
            frame = pd.DataFrame({"path": paths})
            done = min(start + self.chunk_rows, len(files)) / len(files)
            yield Chunk(frame, frame.copy(), done)

    def _listed_images(self) -> Iterator[Chunk]:
        """A CSV listing image files in a `path` column (relative paths: to the CSV)."""
        for chunk in self._csv():
            if "path" in chunk.frame.columns:
                base = self.path.parent
                chunk.frame["path"] = [str(base / p) for p in chunk.frame["path"].astype(str)]
            yield chunk

    def _read_whole(self) -> pd.DataFrame:
        try:
            if self.path.suffix.lower() == ".parquet":
                return pd.read_parquet(self.path)
            return pd.read_csv(self.path, sep=guess_file(self.path))
        except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
            raise _unreadable(self.path, exc) from None


class OutputWriter:
    """Appends prediction frames to a temporary file; `commit()` renames it to `path`."""

    def __init__(self, path: Path, fmt: str):
        if fmt not in FORMATS:
            raise DeepmineError(
                f"format={fmt!r} is not one of {', '.join(FORMATS)}", "e.g. format=csv"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fmt = path, fmt
        self.partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        self.rows = 0
        self._parquet = None
        self._schema = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(
                self.partial, mode="a" if self.rows else "w", header=not self.rows, index=False
            )
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._schema = table.schema
                self._parquet = pq.ParquetWriter(self.partial, self._schema)
            self._parquet.write_table(table.cast(self._schema))
        self.rows += len(frame)

    def commit(self) -> Path:
        self._close()
        if not self.partial.exists():  # no chunk at all: an empty file with no rows
            pd.DataFrame().to_csv(self.partial, index=False)
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


def output_path(input_path: Path, output: str | None, fmt: str | None) -> tuple[Path, str]:
    """Where the predictions go and in which format: `output=` (its suffix names the format
    unless `format=` does), else `<input>.predictions.<csv|parquet>` beside the input."""
    if fmt is not None and fmt not in FORMATS:
        raise DeepmineError(
            f"format={fmt!r} is not one of {', '.join(FORMATS)}", "e.g. format=parquet"
        )
    if output:
        path = Path(output).expanduser().resolve()
        found = path.suffix.lower().lstrip(".")
        return path, fmt or (found if found in FORMATS else "csv")
    fmt = fmt or "csv"
    stem = input_path.name if input_path.is_dir() else input_path.stem
    return input_path.parent / f"{stem}.predictions.{fmt}", fmt


def _unreadable(path: Path, exc: BaseException) -> DeepmineError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return DeepmineError(
        f"cannot read input {path}: {first}", "fix the file, or pass a CSV or Parquet file"
    )
