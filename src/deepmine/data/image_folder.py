"""A user's own images: one folder per class of PNG/JPEG files, read into memory once.

Layout (Keras' `image_dataset_from_directory` convention):

    root/train/<class>/<any name>.png|.jpg|.jpeg    (subfolders of a class folder count too)
    root/test/<class>/...                           optional: the test split
    root/<class>/...                                also accepted: root is then the train part

Without a test/ folder the test split is cut from the training images, stratified by class and
seeded by `split_seed`, so every class is tested and every run tests the same images; the
validation split is then cut from the rest by `InMemoryDataModule` (`val_size`).

Why the folder is scanned in the constructor but decoded in `load()`: the class names, the
number of classes and the input shape follow from the folder names and the config alone, so
`shapes()` (which `build` calls to fill the config's null shape keys before the net exists)
costs a directory listing, and every mistake in the layout (a missing root, no class folders, an
empty class, one class only, test/ classes unlike train/) stops the command before any run is
opened. Decoding is the expensive part: it runs once, on threads (Pillow releases the GIL while
decoding and resizing), and its uint8 result is kept in the decoded-array cache keyed by every
file's relative path, size and modification time plus the options that change pixels
(`image_size`, `color`, `on_bad_image`), so an edited image or option decodes again and an
unchanged folder never does.

The folder's identity is part of a run's record: inside the project's DVC-tracked `data/` it is
versioned by DVC (`dvc_tracked`); anywhere else `deepmine train` tags the run with its path and
`folder_hash`.

It is one module on purpose: the layouts, the decoding, the cache key and the folder hash must
agree on which files an image folder holds, so they are read together.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepmine.data.batches import MappedRows
from deepmine.data.cache import cached_arrays
from deepmine.data.in_memory import InMemoryDataModule
from deepmine.errors import DeepmineError, first_line

EXTENSIONS = (".png", ".jpg", ".jpeg")
COLORS = {"gray": ("L", 1), "rgb": ("RGB", 3)}
ON_BAD_IMAGE = ("fail", "skip")
#: bumped when decoding changes, so entries written by older code are never read
CACHE_VERSION = "1"
#: images decoded and waiting to be copied at most (a cache miss decodes in batches of this)
DECODE_BATCH = 256
#: how many file names a warning line shows before "..."
SHOWN = 5


@dataclass(frozen=True)
class ImageFile:
    """One image of the folder: its path relative to root, its class, its split."""

    rel: str
    label: int
    test: bool


@dataclass
class Listing:
    """What a scan of the folder found: class names (sorted) and the image files (sorted by
    relative path), plus the files it ignored for not being images."""

    class_names: tuple[str, ...]
    files: list[ImageFile]
    has_test: bool
    ignored: list[str]


class ImageFolderDataModule(InMemoryDataModule):
    """Options are the keys of conf/data/image_folder.yaml, documented there; any other keyword
    (batch sizes, `val_size`, `split_seed`, `normalize`, ...) goes to `InMemoryDataModule`."""

    def __init__(
        self,
        root: str,
        image_size: Sequence[int] = (28, 28),
        color: str = "gray",
        on_bad_image: str = "fail",
        test_size: float | int = 0.2,
        cache_dir: str | None = None,
        workers: int | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        num_outputs: int | None = None,
        **kwargs,
    ):
        from deepmine.data.csv_table import resolve
        from deepmine.project import project_root

        self.image_size = _checked_size(image_size)
        self.color = _checked_choice("color", color, tuple(COLORS))
        self.on_bad_image = _checked_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
        self.root = resolve(root)
        self.listing = scan(self.root, given=str(root))
        if self.listing.ignored:
            _warn(
                f"ignored {len(self.listing.ignored)} entries of {self.root} that are not "
                f"{'/'.join(EXTENSIONS)} images in a class folder",
                self.listing.ignored,
            )
        found_shape = [COLORS[self.color][1], *self.image_size]
        found_classes = len(self.listing.class_names)
        _agree("input_shape", input_shape, found_shape, "data.image_size and data.color")
        _agree("num_classes", num_classes, found_classes, f"the class folders of {self.root}")
        super().__init__(
            num_classes=found_classes,
            input_shape=found_shape,
            num_outputs=num_outputs,
            **kwargs,
        )
        self.class_names = self.listing.class_names
        self.test_size = test_size
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.workers = workers or min(8, os.cpu_count() or 1)
        # decided per folder, not per class: only a folder inside data/ has a DVC version
        self.dvc_tracked = self.root.is_relative_to((project_root() / "data").resolve())
        #: files left out by `on_bad_image=skip` (paths relative to root), known after loading
        self.skipped_files: list[str] = []

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        files = self.listing.files
        arrays = cached_arrays(
            self.cache_dir,
            f"image_folder-{self.cache_key()}",
            ("x", "kept"),
            self._decode_all,
            mmap=self.mmap_wanted,
            write=self._decode_to,
        )
        kept = arrays["kept"].astype(bool)
        self.skipped_files = [f.rel for f, ok in zip(files, kept, strict=True) if not ok]
        if self.skipped_files:
            _warn(
                f"skipped {len(self.skipped_files)} unreadable image(s) of {self.root} "
                "(data.on_bad_image=skip)",
                self.skipped_files,
            )
        x = arrays["x"]
        labels = np.array([f.label for f in files], dtype=np.int64)[kept]
        is_test = np.array([f.test for f in files], dtype=bool)[kept]
        self._require_every_class(labels[~is_test], "train")
        if self.listing.has_test:
            self._require_every_class(labels[is_test], "test")
            fit, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        else:
            fit, test = stratified_split(labels, self.test_size, self.split_seed)
        if isinstance(x, np.memmap):  # data.storage=mmap: the splits are views of one map
            rows = MappedRows(x, x.shape[1:])
            return rows.view(fit), labels[fit], rows.view(test), labels[test]
        return x[fit], labels[fit], x[test], labels[test]

    def cache_key(self) -> str:
        """Every file's relative path, size and mtime, and the options that change pixels."""
        digest = hashlib.sha1(f"v{CACHE_VERSION}\n".encode())
        height, width = self.image_size
        options = f"{height}x{width} {self.color} {self.on_bad_image}\n"
        digest.update(options.encode())
        for f in self.listing.files:
            stat = (self.root / f.rel).stat()
            digest.update(f"{f.rel}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def _decode_all(self) -> dict[str, np.ndarray]:
        """Every image as uint8 `(channels, height, width)`, in listing order; `kept` marks
        those that could be read (all of them, or the run stops, under `on_bad_image=fail`)."""
        x = np.empty((len(self.listing.files), *self._pixels_shape()), dtype=np.uint8)
        kept = self._decode_into(x)
        return {"x": x[kept], "kept": kept}

    def _decode_to(self, folder: Path) -> None:
        """`_decode_all` written to `folder/x.npy` and `kept.npy` as it goes, for
        `data.storage=mmap`: a folder larger than memory is decoded `DECODE_BATCH` images at a
        time into a file mapped for writing, never held whole; unreadable images skipped are
        then left out by copying the kept rows, a batch at a time, into the final file."""
        shape = (len(self.listing.files), *self._pixels_shape())
        everything = np.lib.format.open_memmap(folder / "all.npy", "w+", np.uint8, shape)
        kept = self._decode_into(everything)
        if kept.all():
            everything.flush()
            del everything
            os.replace(folder / "all.npy", folder / "x.npy")
        else:
            rows = np.flatnonzero(kept)
            x = np.lib.format.open_memmap(folder / "x.npy", "w+", np.uint8, (len(rows), *shape[1:]))
            for start in range(0, len(rows), DECODE_BATCH):
                x[start : start + DECODE_BATCH] = everything[rows[start : start + DECODE_BATCH]]
            x.flush()
            del x, everything
            (folder / "all.npy").unlink()
        np.save(folder / "kept.npy", kept, allow_pickle=False)

    def _pixels_shape(self) -> tuple[int, int, int]:
        return (COLORS[self.color][1], *self.image_size)

    def _decode_into(self, x: np.ndarray) -> np.ndarray:
        """Decode every image into `x[i]` (an array or a map being written), `DECODE_BATCH`
        images in flight at most, so the decoded images waiting to be copied stay bounded;
        returns `kept`."""
        mode = COLORS[self.color][0]
        paths = [self.root / f.rel for f in self.listing.files]
        kept = np.zeros(len(paths), dtype=bool)

        def read(path: Path):
            try:
                return decode_image(path, self.image_size, mode), None
            except Exception as exc:  # whatever Pillow raises for a broken file
                return None, exc

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for start in range(0, len(paths), DECODE_BATCH):
                batch = paths[start : start + DECODE_BATCH]
                for i, (pixels, error) in enumerate(pool.map(read, batch), start):
                    if error is None:
                        x[i], kept[i] = pixels, True
                    elif self.on_bad_image == "fail":
                        pool.shutdown(cancel_futures=True)
                        raise DeepmineError(
                            f"cannot read image {paths[i]}: {type(error).__name__}: "
                            f"{first_line(error)}",
                            "replace or delete the file, or set data.on_bad_image=skip to leave "
                            "unreadable images out",
                        )
        return kept

    def _require_every_class(self, labels: np.ndarray, split: str) -> None:
        """After skipping unreadable images a class may have none left in a split."""
        missing = sorted(set(range(self.num_classes)) - set(labels.tolist()))
        if missing:
            names = ", ".join(self.class_names[i] for i in missing)
            raise DeepmineError(
                f"no readable {split} image is left in class folder(s) {names} of {self.root}",
                "replace the unreadable images (see the warning above) or remove the folder",
            )


def decode_image(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image file as uint8 `(channels, height, width)` in Pillow mode `mode` ("L" or
    "RGB"), resized to `size` = (height, width). Pixels are unchanged when the file already has
    that size and mode (an exported folder reads back bit for bit)."""
    from PIL import Image

    height, width = size
    with Image.open(path) as image:
        # a JPEG far larger than `size` is decoded at a reduced scale by libjpeg (much faster)
        image.draft(mode, (width, height))
        image = image.convert(mode)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def scan(root: Path, given: str | None = None) -> Listing:
    """The class folders and image files under `root`, checked: every layout mistake is a
    one-line `DeepmineError` naming the folder. `given`: the path as the user wrote it."""
    where = f"data.root={given}: " if given is not None and given != str(root) else ""
    if not root.exists():
        raise DeepmineError(
            f"{where}{root} does not exist",
            "point data.root at a folder of class folders (a relative path is read from the "
            "current directory, else from the project root)",
        )
    if not root.is_dir():
        raise DeepmineError(
            f"{where}{root} is not a folder", "point data.root at a folder of class folders"
        )
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        if test_dir.is_dir():
            raise DeepmineError(
                f"{root} has a test/ folder but no train/ folder",
                "put the training class folders under train/ (or rename test/ if it is a class)",
            )
        train_dir, test_dir = root, None
    elif not test_dir.is_dir():
        test_dir = None
    ignored: list[str] = []
    if train_dir != root:  # beside train/ and test/, nothing of root is read (a val/ folder)
        ignored += [
            e.name + ("/" if e.is_dir() else "")
            for e in sorted(root.iterdir())
            if not e.name.startswith(".") and e.name not in ("train", "test")
        ]
    names, files = _classes(root, train_dir, test=False, ignored=ignored)
    if len(names) < 2:
        raise DeepmineError(
            f"{train_dir} has only one class folder ({names[0]})",
            "classification needs at least two classes: add one folder of images per class",
        )
    if test_dir is not None:
        test_names, test_files = _classes(root, test_dir, test=True, ignored=ignored)
        if test_names != names:
            lacking = sorted(set(names) - set(test_names))
            extra = sorted(set(test_names) - set(names))
            what = "; ".join(
                part
                for part in (
                    f"lacks {', '.join(lacking)}" if lacking else "",
                    f"has {', '.join(extra)} not in train/" if extra else "",
                )
                if part
            )
            raise DeepmineError(
                f"the class folders of {test_dir} differ from those of {train_dir}: test/ {what}",
                "give test/ exactly the class folders of train/",
            )
        files += test_files
    return Listing(names, sorted(files, key=lambda f: f.rel), test_dir is not None, sorted(ignored))


def _classes(
    root: Path, folder: Path, test: bool, ignored: list[str]
) -> tuple[tuple[str, ...], list[ImageFile]]:
    """The sorted class folders of `folder` and their images; a class folder without images
    and a folder without class folders are refused. Names of non-image files go to `ignored`."""
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    ignored += [_rel(e, root) for e in entries if not e.is_dir()]
    classes = tuple(e.name for e in entries if e.is_dir())
    if not classes:
        raise DeepmineError(
            f"{folder} has no class folders",
            f"put one folder of PNG/JPEG images per class in it, e.g. {folder}/cat/1.png",
        )
    files = []
    for label, name in enumerate(classes):
        images = [p for p in _visible_files(folder / name) if p.suffix.lower() in EXTENSIONS]
        ignored += [
            _rel(p, root)
            for p in _visible_files(folder / name)
            if p.suffix.lower() not in EXTENSIONS
        ]
        if not images:
            raise DeepmineError(
                f"class folder {folder / name} has no PNG or JPEG images",
                "add images to it, or remove the folder",
            )
        files += [ImageFile(_rel(p, root), label, test) for p in images]
    return classes, files


def _visible_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, recursively, leaving out hidden files and folders."""
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(parent) / n for n in sorted(names) if not n.startswith(".")]
    return found


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def image_files(root: Path) -> list[str]:
    """Every image file under `root` (relative, sorted; hidden files and folders left out)."""
    root = Path(root)
    return sorted(_rel(p, root) for p in _visible_files(root) if p.suffix.lower() in EXTENSIONS)


def folder_hash(root: Path) -> str:
    """A content hash of an image folder: SHA-1 over every image's relative path, size and the
    MD5 of its bytes, in sorted order. What a run records for a folder DVC does not version:
    renaming, moving an image to another class, or changing one byte changes it; touching a
    file or copying the folder elsewhere does not."""
    root = Path(root)
    digest = hashlib.sha1()
    for rel in image_files(root):
        path = root / rel
        with path.open("rb") as handle:
            md5 = hashlib.file_digest(handle, "md5").hexdigest()
        digest.update(f"{rel}\t{path.stat().st_size}\t{md5}\n".encode())
    return digest.hexdigest()


def stratified_split(
    labels: np.ndarray, test_size: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(fit, test)` indices: `test_size` (a fraction or a count) of the images drawn with
    `seed`, stratified by class whenever every class can be on both sides."""
    from sklearn.model_selection import train_test_split

    from deepmine.data.tables import can_stratify
    from deepmine.data.tensors import split_count

    count = split_count(test_size, len(labels), "data.test_size")
    strata = labels if can_stratify(labels, count) else None
    fit, test = train_test_split(
        np.arange(len(labels)), test_size=count, random_state=seed, stratify=strata
    )
    return np.sort(fit), np.sort(test)


def _checked_size(size: Sequence[int]) -> tuple[int, int]:
    values = list(size) if isinstance(size, Sequence) and not isinstance(size, str) else []
    if len(values) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise DeepmineError(
            f"data.image_size={size!r} is not [height, width]", "e.g. data.image_size=[28,28]"
        )
    return values[0], values[1]


def _checked_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DeepmineError(
            f"data.{key}={value!r} is not one of {', '.join(choices)}",
            f"e.g. data.{key}={choices[0]}",
        )
    return value


def _agree(key: str, configured, found, source: str) -> None:
    """A shape key set in the config (not null) must be what the folder gives."""
    if configured is None:
        return
    value = list(configured) if isinstance(configured, Sequence) else configured
    if value != found:
        raise DeepmineError(
            f"data.{key}={value} but {source} give {found}",
            f"set data.{key}=null (filled from the folder) or change {source}",
        )


def _warn(what: str, names: list[str]) -> None:
    shown = ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
    print(f"warning: {what}: {shown}", file=sys.stderr, flush=True)
