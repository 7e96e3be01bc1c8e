"""The decode-once image cache: when a load reuses it and when the file list forces a rebuild.

``fastconv.data._cache_key`` hashes, per listed file, the file it resolves to, the name it is
listed under, its byte size, its mtime and its label, plus the training size. Each rebuild
test below changes one of those alone and proves the rebuild by content: the cache then holds
the files as they are now (paths, labels, freshly decoded pixels), which the stale cache does
not. The files are tiny BMPs (their byte size depends on their side only) with one colour
each, so a stale or shifted image shows; mtimes are pinned with ``os.utime``, never slept on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fake_kaggle import write_bad_files
from PIL import Image

from fastconv import data
from fastconv.data import ImageCache, find_images, load_image, load_or_build_cache

SIDE = 8  # px: the side of the files written, and the training size they are cached at
OTHER_SIZE = 6
PINNED_MTIME_NS = 1_600_000_000 * 10**9
NEW_COLOR = (255, 255, 0)  # no file of the folder has it


def color(index: int) -> tuple[int, int, int]:
    """A colour of its own for the ``index``-th file written."""
    return (30 + 35 * index, 90, 230 - 35 * index)


def write_bmp(path: Path, rgb: tuple[int, int, int], side: int = SIDE) -> Path:
    """A solid ``side`` x ``side`` BMP of ``rgb`` at ``path`` (lossless; size set by ``side``)."""
    Image.new("RGB", (side, side), rgb).save(path, format="BMP")
    return path


def set_mtime(path: Path, mtime_ns: int = PINNED_MTIME_NS) -> None:
    """Give ``path`` (the file a symlink leads to) this mtime, its atime unchanged."""
    os.utime(path, ns=(path.stat().st_atime_ns, mtime_ns))


def load(root: Path, size: int = SIDE) -> ImageCache:
    """What training does: find the images under ``root``, load or build their cache."""
    return load_or_build_cache(find_images(root), size, root / "cache")


@pytest.fixture
def decoded(monkeypatch) -> list[list[str]]:
    """The file lists fastconv.data decodes, one entry per cache build, recorded as it runs."""
    calls: list[list[str]] = []
    decode_images = data.decode_images

    def recording_decode_images(paths, *args, **kwargs):
        calls.append([str(path) for path in paths])
        return decode_images(paths, *args, **kwargs)

    monkeypatch.setattr(data, "decode_images", recording_decode_images)
    return calls


@pytest.fixture
def kaggle_folder(tmp_path) -> Path:
    """``train/cat.{0,1,2}.bmp`` and ``train/dog.{0,1,2}.bmp``, all with the pinned mtime."""
    (tmp_path / "train").mkdir()
    names = [f"{animal}.{n}.bmp" for animal in ("cat", "dog") for n in range(3)]
    for index, name in enumerate(names):
        set_mtime(write_bmp(tmp_path / "train" / name, color(index)))
    (tmp_path / "store").mkdir()  # symlink targets, outside the scanned folder
    return tmp_path


def symlink_image(link: Path, target: Path) -> None:
    """Replace the listed file ``link`` by a symlink to ``target``."""
    link.unlink(missing_ok=True)
    link.symlink_to(target)


def assert_rebuilt_from_current_files(
    root: Path, decoded: list[list[str]], size: int = SIDE
) -> ImageCache:
    """Load ``root`` again: the cache must hold its files as they are now, decoded afresh."""
    decoded.clear()
    found = find_images(root)
    cache = load_or_build_cache(found, size, root / "cache")
    assert cache.paths == [str(path) for path in found.paths]
    assert cache.labels.tolist() == found.labels.tolist()
    assert cache.images.shape == (len(found.paths), size, size, 3)
    for path, image in zip(cache.paths, cache.images, strict=True):
        np.testing.assert_array_equal(image, load_image(path, size), err_msg=path)
    assert len(decoded) == 1, "the cache was not rebuilt"
    return cache


def pixels_of(cache: ImageCache, path: Path) -> np.ndarray:
    """The cached image of the file listed as ``path``."""
    return cache.images[cache.paths.index(str(path))]


# --------------------------------------------------------------------------- reuse


def test_untouched_folder_reuses_the_cache_without_decoding(kaggle_folder, decoded):
    """A second load of an unchanged folder maps the same file and decodes nothing."""
    built = load(kaggle_folder)
    decoded.clear()
    loaded = load(kaggle_folder)
    assert decoded == []
    assert loaded.file == built.file and loaded.paths == built.paths
    np.testing.assert_array_equal(loaded.images, built.images)
    np.testing.assert_array_equal(loaded.labels, built.labels)


# --------------------------------------------------------------------------- rebuilds


def test_added_file_rebuilds(kaggle_folder, decoded):
    """One more image in the folder: the key has one more entry."""
    load(kaggle_folder)
    set_mtime(write_bmp(kaggle_folder / "train" / "dog.3.bmp", NEW_COLOR))
    assert_rebuilt_from_current_files(kaggle_folder, decoded)


def test_removed_file_rebuilds(kaggle_folder, decoded):
    """One image fewer in the folder: the key has one entry less."""
    load(kaggle_folder)
    (kaggle_folder / "train" / "dog.1.bmp").unlink()
    assert_rebuilt_from_current_files(kaggle_folder, decoded)


def test_renamed_file_rebuilds(kaggle_folder, decoded):
    """A rename keeping the content, size, mtime, label and place in the list: the path differs."""
    load(kaggle_folder)
    os.rename(kaggle_folder / "train" / "cat.1.bmp", kaggle_folder / "train" / "cat.15.bmp")
    assert_rebuilt_from_current_files(kaggle_folder, decoded)


def test_file_rewritten_with_another_size_under_the_same_mtime_rebuilds(kaggle_folder, decoded):
    """New bytes of another length, the old mtime put back: the byte size alone tells."""
    path = kaggle_folder / "train" / "cat.1.bmp"
    old = path.stat()
    load(kaggle_folder)
    write_bmp(path, NEW_COLOR, side=SIDE + 2)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert path.stat().st_size != old.st_size and path.stat().st_mtime_ns == old.st_mtime_ns
    cache = assert_rebuilt_from_current_files(kaggle_folder, decoded)
    assert (pixels_of(cache, path) == NEW_COLOR).all()


def test_file_rewritten_with_the_same_size_and_a_newer_mtime_rebuilds(kaggle_folder, decoded):
    """New pixels of the same byte length, one second newer: the mtime alone tells."""
    path = kaggle_folder / "train" / "cat.1.bmp"
    old = path.stat()
    load(kaggle_folder)
    write_bmp(path, NEW_COLOR)
    set_mtime(path, old.st_mtime_ns + 10**9)
    assert path.stat().st_size == old.st_size
    cache = assert_rebuilt_from_current_files(kaggle_folder, decoded)
    assert (pixels_of(cache, path) == NEW_COLOR).all()


def test_another_training_size_builds_its_own_cache(kaggle_folder, decoded):
    """The same files at another size are decoded again, at that size."""
    load(kaggle_folder)
    assert_rebuilt_from_current_files(kaggle_folder, decoded, size=OTHER_SIZE)


def test_symlink_renamed_rebuilds(kaggle_folder, decoded):
    """A renamed symlink leads to the same file (same resolved path, size, mtime): the name
    it is listed under alone tells, and the cache must record the new one."""
    target = write_bmp(kaggle_folder / "store" / "a.bmp", NEW_COLOR)
    set_mtime(target)
    symlink_image(kaggle_folder / "train" / "cat.1.bmp", target)
    load(kaggle_folder)
    os.rename(kaggle_folder / "train" / "cat.1.bmp", kaggle_folder / "train" / "cat.15.bmp")
    assert_rebuilt_from_current_files(kaggle_folder, decoded)


def test_symlink_pointed_at_another_file_of_the_same_size_and_mtime_rebuilds(
    kaggle_folder, decoded
):
    """The listed name, size and mtime stay, the pixels change: the resolved path alone tells."""
    first = write_bmp(kaggle_folder / "store" / "a.bmp", color(0))
    second = write_bmp(kaggle_folder / "store" / "b.bmp", NEW_COLOR)
    for target in (first, second):
        set_mtime(target)
    link = kaggle_folder / "train" / "cat.1.bmp"
    symlink_image(link, first)
    load(kaggle_folder)
    symlink_image(link, second)
    cache = assert_rebuilt_from_current_files(kaggle_folder, decoded)
    assert (pixels_of(cache, link) == NEW_COLOR).all()


def test_symlinked_class_folder_renamed_to_the_other_class_rebuilds(tmp_path, decoded):
    """Labels come from the listed path (Kaggle name or class folder), so a label changes alone
    only through a symlinked class folder renamed: here ``Dogs`` -> ``Cats`` (upper case sorts
    first, so the list keeps its order) relabels images whose resolved path, name, size and
    mtime all stay. The label alone tells."""
    store, train = tmp_path / "store", tmp_path / "train"
    for index, folder in enumerate((store, train / "cat", train / "dog")):
        folder.mkdir(parents=True)
        for n in range(2):
            set_mtime(write_bmp(folder / f"{n}.bmp", color(2 * index + n)))
    (train / "Dogs").symlink_to(store, target_is_directory=True)
    assert find_images(tmp_path).labels.tolist() == [1, 1, 0, 0, 1, 1]
    load(tmp_path)
    os.rename(train / "Dogs", train / "Cats")
    cache = assert_rebuilt_from_current_files(tmp_path, decoded)
    assert cache.labels.tolist() == [0, 0, 0, 0, 1, 1]


# --------------------------------------------------------------------------- unreadable files


def test_reloaded_cache_keeps_each_label_with_its_image_around_unreadable_files(tmp_path, decoded):
    """Unreadable files first, among the cats, at the class boundary and last (three cats, one
    dog): a later load that reuses the cache still pairs every image with its own label and
    its own pixels, so the skipped files shifted nothing."""
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    broken = write_bad_files(tmp_path / "broken")
    unreadable = {
        "cat.0.jpg": broken["empty"],  # the first file
        "cat.2.jpg": broken["text"],  # between two readable cats
        "cat.4.jpg": broken["truncated"],  # the last cat, just before the dogs
        "dog.3.jpg": broken["bomb"],  # the last file
    }
    for name, source in unreadable.items():
        os.replace(source, train / name)
    readable = ["cat.1.bmp", "cat.3.bmp", "dog.0.bmp", "dog.1.bmp", "dog.2.bmp"]
    for index, name in enumerate(readable):
        write_bmp(train / name, color(index))

    built = load(tmp_path / "data")
    decoded.clear()
    cache = load(tmp_path / "data")
    assert decoded == [], "the second load decoded again instead of reusing the cache"
    assert cache.file == built.file
    assert [Path(path).name for path in cache.paths] == readable
    assert sorted(Path(reason.split(": ")[0]).name for reason in cache.skipped) == sorted(
        unreadable
    )
    for i, path in enumerate(cache.paths):
        assert cache.labels[i] == int(Path(path).name.startswith("dog")), path
        np.testing.assert_array_equal(cache.images[i], load_image(path, SIDE), err_msg=path)
