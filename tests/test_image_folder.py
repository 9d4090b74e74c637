"""A user's own image folder (`data=image_folder`) on real PNGs exported from Fashion-MNIST's test
set: a recorded CLI run, shapes filled from the folder, the decoded-array cache, every bad layout
in one line, resizing, the splits, the export helper's round trip, `deepmine data add` in a
throwaway DVC project, and what a run records about a folder outside data/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_train_records import artifact_paths

from conftest import ROOT, make_dvc_project, one_line_error, run_cli
from deepmine.data import image_folder
from deepmine.data.image_export import export_images, safe_name
from deepmine.data.image_folder import ImageFolderDataModule, folder_hash
from deepmine.errors import DeepmineError

#: the four classes the small folder keeps (sorted, as the folder reader sorts them)
FOUR = ("Bag", "Coat", "Dress", "T-shirt_top")
PER_CLASS = 8


@pytest.fixture(scope="module")
def fashion():
    from deepmine.data.fashion_mnist import FashionMNISTDataModule

    dm = FashionMNISTDataModule(
        data_dir=str(ROOT / "data" / "fashion_mnist"), num_classes=10, input_shape=[1, 28, 28]
    )
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fashion) -> Path:
    """Fashion-MNIST's test set, 8 images of each of the 10 classes, as class folders of PNGs."""
    out = tmp_path_factory.mktemp("exported") / "fashion"
    written = export_images(fashion, "test", out, limit_per_class=PER_CLASS)
    assert written == {safe_name(n): PER_CLASS for n in fashion.class_names}
    return out


@pytest.fixture
def four(tmp_path, exported) -> Path:
    """A private copy of four classes x 8 images (tests may edit it)."""
    folder = tmp_path / "four"
    for name in FOUR:
        shutil.copytree(exported / name, folder / name)
    return folder


def datamodule(root: Path, **options) -> ImageFolderDataModule:
    options.setdefault("cache_dir", None)
    return ImageFolderDataModule(root=str(root), batch_size=8, eval_batch_size=64, **options)


def png(path: Path, pixels, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode).save(path)
    return path


def gray(value: int, size=(6, 6)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def problem(exc_info) -> str:
    line = exc_info.value.one_line()
    assert "\n" not in line and "Fix: " in line
    return line


# --- through the CLI (the only two training subprocesses of this file) ------------------------


def test_a_folder_trains_end_to_end_and_the_run_records_it(sandbox, four, tmp_path):
    images = sandbox.cwd / "images"
    shutil.copytree(four, images)
    cache = tmp_path / "cache"
    proc = sandbox.train(
        "data=image_folder",
        "data.root=images",  # relative to the working directory
        f"data.cache_dir={cache}",
        "net=cnn",
        "debug=fast",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = sandbox.runs()
    assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
    params, tags = run.data.params, run.data.tags
    # shapes filled from the folder before the net was built, and recorded as filled
    assert params["data.input_shape"] == "[1, 28, 28]"
    assert params["data.num_classes"] == "4" and params["data.num_outputs"] == "4"
    assert params["net.num_outputs"] == "4" and params["net.input_shape"] == "[1, 28, 28]"
    assert params["data.root"] == str(images.resolve())
    assert tags["deepmine.data.class_names"] == ", ".join(FOUR)
    assert "plots/confusion_matrix.png" in artifact_paths(sandbox.client(), run.info.run_id)
    # outside data/: no DVC version, so the run names the folder and its content hash
    assert tags["deepmine.data.dvc_tracked"] == "false"
    assert tags["deepmine.data.image_folder.root"] == str(images.resolve())
    assert tags["deepmine.data.image_folder.hash"] == folder_hash(images)
    assert "deepmine.data.matches" not in tags
    # the run decoded once into the cache; the same folder now loads without decoding
    (entry,) = cache.iterdir()
    assert entry.name.startswith("image_folder-")
    assert datamodule(images, cache_dir=str(cache)).cache_key() in entry.name


def test_a_bad_folder_stops_the_cli_in_one_line_before_any_run(sandbox, four):
    """An empty class folder (seen when listing) and a corrupt image (seen only when decoding:
    `build_datamodule` reads the data before the run opens) in one folder: the first found
    stops the run; with the empty folder gone, the corrupt image does, and no run is left."""
    (four / "Empty").mkdir()
    (four / "Empty" / "notes.txt").write_text("no images here")
    broken = four / "Bag" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    proc = sandbox.train("data=image_folder", f"data.root={four}", "net=cnn", "debug=fast")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert f"class folder {four / 'Empty'} has no PNG or JPEG images" in line
    shutil.rmtree(four / "Empty")
    proc = sandbox.train("data=image_folder", f"data.root={four}", "net=cnn", "debug=fast")
    assert proc.returncode == 2
    assert f"cannot read image {broken}" in one_line_error(proc)
    assert sandbox.runs() == []


# --- shapes, cache -----------------------------------------------------------------------------


def compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deepmine.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose("train", overrides=["paths.output_dir=/tmp/unused", *overrides])
    finally:
        GlobalHydra.instance().clear()


def refuse_decoding(monkeypatch):
    def fail(*args):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(image_folder, "decode_image", fail)


@pytest.mark.parametrize(
    ("overrides", "shape"),
    [((), [1, 28, 28]), (("data.color=rgb", "data.image_size=[16,12]"), [3, 16, 12])],
)
def test_build_fills_the_shapes_from_the_folder(monkeypatch, four, overrides, shape):
    """The shapes come from listing the folder (no decoding); `build_datamodule` then reads the
    images before any run opens, so a bad image is found before a run exists."""
    from hydra.utils import instantiate

    from deepmine.run.build import build_datamodule

    cfg = compose("data=image_folder", f"data.root={four}", "net=cnn", *overrides)
    assert cfg.data.input_shape is None and cfg.data.num_outputs is None
    with monkeypatch.context() as patch:
        refuse_decoding(patch)
        listed = instantiate(cfg.data)
        assert listed.shapes()["input_shape"] == shape and not listed.tensors
    dm = build_datamodule(cfg)
    assert list(cfg.data.input_shape) == shape and cfg.data.num_classes == 4
    assert cfg.data.num_outputs == 4 and cfg.net.num_outputs == 4
    assert list(cfg.net.input_shape) == shape
    assert instantiate(cfg.net)(torch.rand(2, *shape)).shape == (2, 4)
    assert dm.class_names == FOUR and tuple(dm.tensors["train"][0].shape[1:]) == tuple(shape)


def test_configured_shapes_must_agree_with_the_folder(four):
    with pytest.raises(DeepmineError) as exc:
        datamodule(four, num_classes=3)
    assert "data.num_classes=3 but the class folders of" in problem(exc)
    with pytest.raises(DeepmineError) as exc:
        datamodule(four, input_shape=[3, 28, 28])
    assert "data.input_shape=[3, 28, 28] but data.image_size and data.color give" in problem(exc)
    assert datamodule(four, num_classes=4, input_shape=[1, 28, 28]).num_outputs == 4


def test_cache_is_written_then_reused_and_invalidated_by_an_edit(monkeypatch, four, tmp_path):
    calls = []
    decode = image_folder.decode_image

    def counted(*args):
        calls.append(args[0])
        return decode(*args)

    monkeypatch.setattr(image_folder, "decode_image", counted)
    cache = str(tmp_path / "cache")
    first = datamodule(four, cache_dir=cache)
    first.setup()
    assert len(calls) == 4 * PER_CLASS

    calls.clear()
    second = datamodule(four, cache_dir=cache)
    second.setup()
    assert calls == []
    for split in ("train", "val", "test"):
        assert torch.equal(first.tensors[split][0], second.tensors[split][0])

    # one image rewritten (mtime bumped): its folder decodes again and the new pixels show
    edited = sorted((four / "Coat").iterdir())[0]
    png(edited, gray(7, (28, 28)))
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = datamodule(four, cache_dir=cache)
    third.setup()
    assert len(calls) == 4 * PER_CLASS
    x = torch.cat([third.tensors[s][0] for s in ("train", "val", "test")])
    assert bool((x == 7).flatten(1).all(1).any())

    # an option that changes pixels is part of the key too
    calls.clear()
    datamodule(four, cache_dir=cache, image_size=[14, 14]).setup()
    assert len(calls) == 4 * PER_CLASS
    assert len(list(Path(cache).iterdir())) == 3


# --- bad input ---------------------------------------------------------------------------------


def two_classes(root: Path, per_class: int = 3) -> Path:
    for name, value in (("a", 10), ("b", 200)):
        for i in range(per_class):
            png(root / name / f"{i}.png", gray(value + i))
    return root


def test_missing_root_and_a_file_as_root(tmp_path):
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path / "nowhere")
    assert f"{tmp_path / 'nowhere'} does not exist" in problem(exc)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path / "file.png")
    assert "is not a folder" in problem(exc)


def test_a_folder_without_class_folders(tmp_path):
    png(tmp_path / "loose.png", gray(1))
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path)
    assert f"{tmp_path} has no class folders" in problem(exc)


def test_a_class_folder_without_images_is_named(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("x")
    (tmp_path / "c" / ".hidden.png").write_bytes(b"")
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path)
    assert f"class folder {tmp_path / 'c'} has no PNG or JPEG images" in problem(exc)


def test_a_single_class_is_refused(tmp_path):
    png(tmp_path / "only" / "0.png", gray(1))
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path)
    line = problem(exc)
    assert "has only one class folder (only)" in line and "at least two classes" in line


def test_test_classes_must_be_the_train_classes(tmp_path):
    two_classes(tmp_path / "train")
    png(tmp_path / "test" / "a" / "0.png", gray(1))
    png(tmp_path / "test" / "z" / "0.png", gray(1))
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path)
    assert "test/ lacks b; has z not in train/" in problem(exc)


def test_a_test_folder_without_train_folder_is_refused(tmp_path):
    two_classes(tmp_path)
    two_classes(tmp_path / "test")
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path)
    assert "has a test/ folder but no train/ folder" in problem(exc)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ({"color": "cmyk"}, "data.color='cmyk' is not one of gray, rgb"),
        ({"on_bad_image": "ignore"}, "data.on_bad_image='ignore' is not one of fail, skip"),
        ({"image_size": [28]}, "data.image_size=[28] is not [height, width]"),
        ({"image_size": [28, 0]}, "is not [height, width]"),
    ],
)
def test_bad_options(tmp_path, option, expected):
    two_classes(tmp_path)
    with pytest.raises(DeepmineError) as exc:
        datamodule(tmp_path, **option)
    assert expected in problem(exc)


@pytest.fixture
def with_corrupt(tmp_path) -> Path:
    root = two_classes(tmp_path / "images", per_class=4)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root


def test_a_corrupt_image_fails_naming_the_file(with_corrupt):
    dm = datamodule(with_corrupt)  # found when decoding, not when listing
    with pytest.raises(DeepmineError) as exc:
        dm.setup()
    line = problem(exc)
    assert f"cannot read image {with_corrupt / 'b' / 'broken.png'}" in line
    assert "data.on_bad_image=skip" in line


def test_a_corrupt_image_is_skipped_and_reported(with_corrupt, capsys, tmp_path):
    cache = str(tmp_path / "cache")
    for _ in range(2):  # decoded, then from the cache: the skipped file is known both times
        dm = datamodule(with_corrupt, on_bad_image="skip", test_size=2, cache_dir=cache)
        dm.setup()
        assert dm.skipped_files == ["b/broken.png"]
        assert sum(len(t[0]) for t in dm.tensors.values()) == 8
        err = capsys.readouterr().err
        assert "warning: skipped 1 unreadable image(s) of" in err and "b/broken.png" in err


def test_skipping_every_image_of_a_class_is_refused(tmp_path):
    two_classes(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0.jpg").write_bytes(b"not a jpeg")
    dm = datamodule(tmp_path, on_bad_image="skip")
    with pytest.raises(DeepmineError) as exc:
        dm.setup()
    assert "no readable train image is left in class folder(s) c" in problem(exc)


def test_files_that_are_not_images_are_named_in_one_warning(tmp_path, capsys):
    two_classes(tmp_path)
    (tmp_path / "a" / "labels.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b" / ".DS_Store").write_bytes(b"")  # hidden: ignored silently
    dm = datamodule(tmp_path)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: ignored 2 entries of") and "a/labels.csv, notes.txt" in line
    assert dm.class_names == ("a", "b")


# --- pixels and splits -------------------------------------------------------------------------


def test_mixed_sizes_and_modes_are_resized(tmp_path):
    red = np.zeros((30, 20, 3), np.uint8)
    red[..., 0] = 255
    png(tmp_path / "red" / "wide.png", red)
    png(tmp_path / "red" / "square.png", np.full((9, 9, 3), (255, 0, 0), np.uint8))
    rgba = np.zeros((5, 50, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    png(tmp_path / "red" / "alpha.png", rgba, "RGBA")
    Image.fromarray(red).save(tmp_path / "red" / "photo.JPG", quality=100)
    png(tmp_path / "dark" / "small.png", gray(0, (3, 4)))
    png(tmp_path / "dark" / "big.png", gray(0, (64, 48)))

    dm = datamodule(tmp_path, image_size=[10, 14], color="rgb", test_size=2, val_size=1)
    x, y = dm.load()[:2]
    both = np.concatenate([x, dm.load()[2]])
    labels = np.concatenate([y, dm.load()[3]])
    assert both.shape == (6, 3, 10, 14) and both.dtype == np.uint8
    reds = both[labels == dm.class_names.index("red")]
    assert np.abs(reds[:, 0].astype(int) - 255).max() <= 2  # the JPEG is off by a little
    assert reds[:, 1:].max() <= 2
    assert both[labels == dm.class_names.index("dark")].max() == 0
    assert datamodule(tmp_path, image_size=[10, 14]).load()[0].shape[1:] == (1, 10, 14)


def test_an_explicit_test_folder_is_the_test_split(tmp_path):
    two_classes(tmp_path / "train", per_class=6)
    for name, count in (("a", 2), ("b", 3)):
        for i in range(count):
            png(tmp_path / "test" / name / f"t{i}.png", gray(100 + 10 * i + count))
    dm = datamodule(tmp_path, val_size=2)
    dm.setup()
    x_test, y_test = dm.tensors["test"]
    assert y_test.tolist() == [0, 0, 1, 1, 1]
    assert sorted(int(v) for v in x_test[:, 0, 0, 0]) == [102, 103, 112, 113, 123]
    assert len(dm.tensors["train"][1]) == 10 and len(dm.tensors["val"][1]) == 2
    fit = torch.cat([dm.tensors["train"][0], dm.tensors["val"][0]])
    assert sorted(int(v) for v in fit[:, 0, 0, 0]) == [*range(10, 16), *range(200, 206)]


def test_the_test_split_cut_from_train_is_stratified_and_seeded(four):
    def test_images(seed):
        dm = datamodule(four, test_size=0.25, split_seed=seed)
        dm.setup()
        x, y = dm.tensors["test"]
        assert torch.bincount(y, minlength=4).tolist() == [2, 2, 2, 2]
        assert len(dm.tensors["train"][1]) + len(dm.tensors["val"][1]) == 24
        return {bytes(image.numpy()) for image in x}

    assert test_images(0) == test_images(0)
    assert test_images(0) != test_images(1)


# --- export, folder identity, data add ---------------------------------------------------------


def test_export_round_trip_keeps_every_pixel(fashion, exported):
    names = sorted(p.name for p in exported.iterdir())
    assert "T-shirt_top" in names and len(names) == 10
    x_test, y_test = fashion.tensors["test"]
    for folder in exported.iterdir():
        files = sorted(folder.iterdir())
        assert len(files) == PER_CLASS
        for path in files:
            index = int(path.stem)
            assert safe_name(fashion.class_names[int(y_test[index])]) == folder.name
            read = np.asarray(Image.open(path))
            assert np.array_equal(read, x_test[index, 0].numpy()), path
    # and back through the folder reader: the same images, pixel for pixel
    dm = datamodule(exported, test_size=10)
    x_train, _, x_test_read, _ = dm.load()
    read_back = {bytes(a) for a in np.concatenate([x_train, x_test_read])}
    source = {bytes(x_test[int(p.stem)].numpy()) for p in exported.rglob("*.png")}
    assert read_back == source


def test_export_scales_float_pixels(tmp_path):
    from deepmine.data.digits import DigitsDataModule

    dm = DigitsDataModule(num_classes=10, input_shape=[1, 8, 8])
    written = export_images(dm, "val", tmp_path, limit_per_class=2)
    assert written == {str(d): 2 for d in range(10)}
    x_val = dm.tensors["val"][0]
    for path in tmp_path.rglob("*.png"):
        expected = np.rint(x_val[int(path.stem), 0].numpy().astype(np.float64) / 16 * 255)
        assert np.array_equal(np.asarray(Image.open(path)), expected.astype(np.uint8))


def test_export_images_cli(tmp_path):
    proc = run_cli("data", "export-images", "digits", "out", "--per-class", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 30 PNGs in 10 class folders" in proc.stdout
    assert f"data.root={tmp_path / 'out'}" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [str(d) for d in range(10)]
    assert len(list((tmp_path / "out").rglob("*.png"))) == 30


def test_folder_hash_follows_the_content_not_the_place(four, tmp_path):
    before = folder_hash(four)
    copy = tmp_path / "elsewhere"
    shutil.copytree(four, copy)
    assert folder_hash(copy) == before
    image = sorted((copy / "Bag").iterdir())[0]
    os.utime(image, ns=(0, 0))
    assert folder_hash(copy) == before
    image.rename(copy / "Coat" / image.name)  # same bytes, another class
    assert folder_hash(copy) != before
    (four / "Bag" / "notes.txt").write_text("not an image")  # not read, not hashed
    assert folder_hash(four) == before
    png(sorted((four / "Dress").iterdir())[0], gray(3, (28, 28)))
    assert folder_hash(four) != before


def test_a_run_tags_a_folder_outside_data_and_leaves_one_inside_to_dvc(four, tmp_path, monkeypatch):
    from deepmine.run.checks import _user_folder

    project = tmp_path / "project"
    inside = project / "data" / "four"
    shutil.copytree(four, inside)
    cfg = OmegaConf.create({"data": {"root": str(inside)}})
    assert _user_folder(cfg, project) == (True, {})
    monkeypatch.chdir(project)
    cfg = OmegaConf.create({"data": {"root": "../four"}})
    tracked, tags = _user_folder(cfg, project)
    assert not tracked and cfg.data.root == str(four)
    assert tags == {
        "deepmine.data.image_folder.root": str(four),
        "deepmine.data.image_folder.hash": folder_hash(four),
    }
    with pytest.raises(DeepmineError) as exc:
        _user_folder(OmegaConf.create({"data": {"root": "missing"}}), project)
    assert "data.root=missing" in problem(exc)
    # the datamodule decides the same way, per folder
    monkeypatch.setenv("DEEPMINE_ROOT", str(project))
    assert datamodule(inside).dvc_tracked and not datamodule(four).dvc_tracked


def test_data_add_copies_and_repins_in_a_throwaway_project(four, tmp_path):
    from deepmine.data import version

    checkout_pin = (ROOT / "data.dvc").read_bytes()
    project = make_dvc_project(tmp_path / "project", with_data=True)
    pinned = version.read_pin(project)
    proc = run_cli(
        "data", "add", str(four), "--name", "shapes", "--root", str(project), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data.root=data/shapes" in proc.stdout
    added = project / "data" / "shapes"
    assert folder_hash(added) == folder_hash(four)
    assert sorted(p.name for p in (project / "data").iterdir()) == [
        "fashion_mnist",
        "series",
        "shapes",
    ]
    repinned = version.read_pin(project)
    assert repinned.md5 != pinned.md5 and repinned.nfiles == pinned.nfiles + 4 * PER_CLASS
    assert version.check(project).matches

    again = run_cli(
        "data", "add", str(four), "--name", "shapes", "--root", str(project), cwd=tmp_path
    )
    assert again.returncode == 2
    assert "data/shapes already exists" in one_line_error(again) and "--force" in again.stderr

    shutil.rmtree(four / "Bag")
    message = version.add_folder(project, four, "shapes", force=True)
    assert "data.root=data/shapes" in message
    assert sorted(p.name for p in added.iterdir()) == ["Coat", "Dress", "T-shirt_top"]
    assert version.read_pin(project).nfiles == pinned.nfiles + 3 * PER_CLASS
    assert version.check(project).matches
    assert (ROOT / "data.dvc").read_bytes() == checkout_pin


def test_data_add_refuses_when_data_differs_from_its_pin(four, tmp_path):
    from deepmine.data import version

    project = make_dvc_project(tmp_path / "project", with_data=True)
    (project / "data" / "series" / "co2.csv").write_text("edited")
    with pytest.raises(DeepmineError) as exc:
        version.add_folder(project, four)
    assert "cannot add to data/" in problem(exc) and "co2.csv" in problem(exc)
    assert not (project / "data" / "four").exists()


@pytest.mark.parametrize("own_test_folder", [False, True])
def test_mmap_storage_gives_the_memory_batches_from_views_of_the_cache(
    tmp_path, four, own_test_folder
):
    """`data.storage=mmap`: every split is rows of the decoded-array cache's memory map, and
    the batches equal the in-memory ones bit for bit (with a split drawn from the folder, and
    with the folder's own test/ images)."""
    from deepmine.data.batches import MappedRows

    if own_test_folder:  # train/<class>/ and test/<class>/
        for name in FOUR:
            (four / "train").mkdir(exist_ok=True)
            shutil.move(four / name, four / "train" / name)
            (four / "test" / name).mkdir(parents=True)
            for image in sorted((four / "train" / name).glob("*.png"))[:2]:
                image.rename(four / "test" / name / image.name)
    memory = datamodule(four, cache_dir=str(tmp_path / "cache"), storage="memory")
    mapped = datamodule(four, cache_dir=str(tmp_path / "cache"), storage="mmap")
    for dm in (memory, mapped):
        dm.setup()
    assert all(isinstance(x, MappedRows) for x, _ in mapped.tensors.values())
    assert not any(isinstance(x, MappedRows) for x, _ in memory.tensors.values())
    for split in ("train", "val", "test"):
        loaders = [getattr(dm, f"{split}_dataloader")() for dm in (memory, mapped)]
        pairs = list(zip(*loaders, strict=True))
        assert pairs
        for (xm, ym), (xd, yd) in pairs:
            assert torch.equal(xm, xd) and torch.equal(ym, yd)


@pytest.mark.parametrize("corrupt", [False, True])
def test_a_cache_miss_under_mmap_is_decoded_in_batches_into_the_file(
    monkeypatch, tmp_path, with_corrupt, corrupt
):
    """`data.storage=mmap` with nothing cached: the images are decoded a few at a time
    straight into the entry's file (never a whole in-memory array), and the splits equal an
    in-memory decoding bit for bit, an unreadable image skipped from the file too."""
    import deepmine.data.image_folder as image_folder

    if not corrupt:
        (with_corrupt / "b" / "broken.png").unlink()
    monkeypatch.setattr(image_folder, "DECODE_BATCH", 3)  # 8 or 9 files: several batches
    monkeypatch.setattr(
        image_folder.ImageFolderDataModule,
        "_decode_all",
        lambda self: pytest.fail("decoded whole under mmap"),
    )
    cache = tmp_path / "cache"
    mapped = datamodule(with_corrupt, cache_dir=str(cache), storage="mmap", on_bad_image="skip")
    mapped.setup()
    monkeypatch.undo()
    memory = datamodule(with_corrupt, storage="memory", on_bad_image="skip")
    memory.setup()
    assert mapped.skipped_files == memory.skipped_files == (["b/broken.png"] if corrupt else [])
    for split in ("train", "val", "test"):
        (xm, ym), (xd, yd) = memory.tensors[split], mapped.tensors[split]
        assert torch.equal(xm, xd[:]) and torch.equal(ym, yd)
    (entry,) = cache.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["kept.npy", "x.npy"]  # no scratch left


def test_an_unreadable_image_under_mmap_leaves_no_cache_entry(tmp_path, with_corrupt):
    cache = tmp_path / "cache"
    with pytest.raises(DeepmineError) as exc:
        datamodule(with_corrupt, cache_dir=str(cache), storage="mmap").setup()
    assert "cannot read image" in problem(exc)
    assert [p for p in cache.rglob("*") if p.is_file()] == []
