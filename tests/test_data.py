"""fastconv.data: layouts, zips, robust decoding, the cache, the split and augmentation."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_kaggle import (
    CAT_RGB,
    DOG_RGB,
    bomb_png_bytes,
    solid_image,
    write_bad_files,
    write_images,
)
from PIL import Image

from fastconv import data
from fastconv.data import (
    BadImageError,
    CachedImages,
    DataNotFoundError,
    find_images,
    load_image,
    load_or_build_cache,
    normalize,
    random_crop_flip,
    random_resized_crop,
    safe_extract_zip,
    stratified_split,
    subsample,
    write_demo_dataset,
)

PER_CLASS = 5


def zip_folder(folder: Path, zip_path: Path, arcroot: str) -> None:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, f"{arcroot}/{path.relative_to(folder)}")


def make_layout(root: Path, layout: str) -> None:
    """Write PER_CLASS images of each class under ``root`` in ``layout``."""
    if layout == "kaggle":
        write_images(root / "train", PER_CLASS)
    elif layout in ("class folders", "PetImages"):
        parent, cat, dog = (
            ("train", "cat", "dog") if layout == "class folders" else ("PetImages", "Cat", "Dog")
        )
        staging = root / "staging"
        write_images(staging, PER_CLASS)
        for name, folder in (("cat", cat), ("dog", dog)):
            (root / parent / folder).mkdir(parents=True)
            for path in staging.glob(f"{name}.*"):
                shutil.move(path, root / parent / folder / path.name.split(".", 1)[1])
        shutil.rmtree(staging)
    elif layout == "train.zip":
        write_images(root / "staging", PER_CLASS)
        zip_folder(root / "staging", root / "train.zip", "train")
        shutil.rmtree(root / "staging")
    elif layout == "dogs-vs-cats.zip":
        write_images(root / "staging", PER_CLASS)
        write_images(root / "staging_test", 2, prefix=False)
        zip_folder(root / "staging", root / "train.zip", "train")
        zip_folder(root / "staging_test", root / "test1.zip", "test1")
        with zipfile.ZipFile(root / "dogs-vs-cats.zip", "w") as outer:
            outer.write(root / "train.zip", "train.zip")
            outer.write(root / "test1.zip", "test1.zip")
        for leftover in ("staging", "staging_test", "train.zip", "test1.zip"):
            path = root / leftover
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "layout, expected_layout",
    [
        ("kaggle", "kaggle"),
        ("class folders", "class folders"),
        ("PetImages", "PetImages"),
        ("train.zip", "kaggle"),
        ("dogs-vs-cats.zip", "kaggle"),
    ],
)
def test_find_images_in_every_layout(tmp_path, layout, expected_layout):
    make_layout(tmp_path, layout)
    found = find_images(tmp_path)
    assert found.layout == expected_layout
    assert found.class_counts() == [PER_CLASS, PER_CLASS]
    for path, label in zip(found.paths, found.labels.tolist(), strict=True):
        in_name = "dog" in str(path.relative_to(tmp_path)).lower()
        assert label == int(in_name), path
        assert load_image(path, 8).shape == (8, 8, 3)
    if layout == "dogs-vs-cats.zip":  # the test set came out of the inner zip too
        assert len(list((tmp_path / "test1").glob("*.*"))) == 4


# Every spelling a real folder uses: relative path -> expected label (0 = cat, 1 = dog);
# None marks a file that must not be taken as a training image at all. Decoys name the other
# class inside a file name, or carry "cat"/"dog" without Kaggle's "<class>." prefix.
SPELLINGS = {
    "kaggle lower case": (
        "kaggle",
        {"train/cat.0.jpg": 0, "train/cat.1.jpg": 0, "train/dog.0.jpg": 1, "train/dog.1.jpg": 1},
    ),
    "kaggle any case and suffix": (
        "kaggle",
        {
            "train/Cat.3.JPG": 0,
            "train/CAT.4.jpeg": 0,
            "train/Dog.3.JPG": 1,
            "train/DOG.5.Png": 1,
            "train/hotdog.1.jpg": None,
            "train/category.2.jpg": None,
            "train/dog.6.txt": None,
        },
    ),
    "kaggle in the data folder": ("kaggle", {"cat.0.jpg": 0, "Dog.1.JPG": 1}),
    "class folders cat dog": (
        "class folders",
        {"train/cat/1.jpg": 0, "train/cat/dog.2.jpg": 0, "train/dog/cat.3.jpg": 1},
    ),
    "class folders cats dogs": (
        "class folders",
        {"train/cats/1.jpg": 0, "train/dogs/2.jpg": 1, "train/other/3.jpg": None},
    ),
    "class folders Cat Dog": ("class folders", {"train/Cat/1.jpg": 0, "train/Dog/1.jpg": 1}),
    "class folders CATS DOGS": ("class folders", {"train/CATS/a.JPG": 0, "train/DOGS/b.png": 1}),
    "class folders mixed": ("class folders", {"train/cats/1.jpg": 0, "train/Dog/2.jpg": 1}),
    "class folders in the data folder": (
        "class folders",
        {"cats/1.jpg": 0, "Dog/2.jpg": 1, "test1/3.jpg": None},
    ),
    "PetImages": ("PetImages", {"PetImages/Cat/0.jpg": 0, "PetImages/Dog/0.jpg": 1}),
    "PetImages one folder down": (
        "PetImages",
        {
            "kagglecatsanddogs_5340/PetImages/Cat/1.jpg": 0,
            "kagglecatsanddogs_5340/PetImages/Dog/1.jpg": 1,
        },
    ),
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_spelling_gives_each_image_its_label(tmp_path, spelling):
    layout, files = SPELLINGS[spelling]
    for name, label in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        solid_image(label or 0, "RGB", (8, 8)).save(path, format="PNG")
    found = find_images(tmp_path)
    assert found.layout == layout
    got = {
        p.relative_to(tmp_path).as_posix(): label
        for p, label in zip(found.paths, found.labels.tolist(), strict=True)
    }
    assert got == {name: label for name, label in files.items() if label is not None}


@pytest.mark.parametrize("layout", ["train.zip", "dogs-vs-cats.zip"])
def test_zips_are_extracted_once(tmp_path, layout, monkeypatch):
    make_layout(tmp_path, layout)
    first = find_images(tmp_path)

    def no_second_extraction(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(data, "safe_extract_zip", no_second_extraction)
    assert find_images(tmp_path).paths == first.paths
    assert not list(tmp_path.glob(".*"))  # no staging folders left behind


@pytest.mark.parametrize("member", ["../escape.jpg", "/abs/escape.jpg", "train/../../escape.jpg"])
def test_unsafe_zip_members_are_refused(tmp_path, member):
    zip_path = tmp_path / "train.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("train/cat.0.jpg", b"x")
        archive.writestr(member, b"x")
    dest = tmp_path / "data"
    with pytest.raises(ValueError, match="unsafe member path"):
        safe_extract_zip(zip_path, dest)
    assert not (tmp_path / "escape.jpg").exists()
    assert not dest.exists() or not any(dest.rglob("*.jpg"))


def test_broken_zip_is_reported(tmp_path):
    (tmp_path / "train.zip").write_bytes(b"PK\x03\x04 half a download")
    with pytest.raises(DataNotFoundError, match="cannot extract .*train.zip"):
        find_images(tmp_path)


def test_no_data_explains_where_to_put_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        find_images(tmp_path)
    message = str(info.value)
    assert "https://www.kaggle.com/c/dogs-vs-cats" in message
    assert "kaggle competitions download -c dogs-vs-cats" in message
    assert "train.zip" in message


def test_one_class_missing_is_reported(tmp_path):
    write_images(tmp_path / "train", 2)
    for path in (tmp_path / "train").glob("dog.*"):
        path.unlink()
    with pytest.raises(DataNotFoundError, match="no dog images"):
        find_images(tmp_path)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA"])
@pytest.mark.parametrize("label", [0, 1])
def test_load_image_converts_modes_to_rgb(tmp_path, mode, label):
    path = tmp_path / ("x.png" if mode in ("P", "RGBA") else "x.jpg")
    solid_image(label, mode, (37, 23)).save(path)
    array = load_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    rgb = np.array(DOG_RGB if label else CAT_RGB, dtype=float)
    if mode == "L":  # ITU-R 601-2 luma, replicated to three channels
        rgb = np.full(3, rgb @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(array.reshape(-1, 3).mean(0), rgb, atol=6)


def test_load_image_applies_exif_orientation(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # height 20, width 40
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    array = load_image(path, 16).astype(int)
    # Turned clockwise, the left (red) half is on top and the right (blue) half below.
    assert array[:6, :, 0].mean() > 200 and array[:6, :, 2].mean() < 50
    assert array[-6:, :, 2].mean() > 200 and array[-6:, :, 0].mean() < 50


def test_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(path)
    assert (load_image(path, 4) == 255).all()


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "bomb"])
def test_bad_files_raise_bad_image_error(tmp_path, kind):
    files = write_bad_files(tmp_path)
    with pytest.raises(BadImageError, match=files[kind].name):
        load_image(files[kind], 16)
    assert Image.MAX_IMAGE_PIXELS is not None  # the bomb limit stays on


def test_bad_image_reason_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "cat.1.jpg"
    solid_image(0, "RGB", (8, 8)).save(path)

    def open_fails(*args, **kwargs):
        raise OSError("broken data stream\n  at byte 42\n")

    monkeypatch.setattr(Image, "open", open_fails)
    with pytest.raises(BadImageError) as info:
        load_image(path, 8)
    assert str(info.value) == f"{path}: broken data stream at byte 42"


def test_images_over_the_bomb_warning_size_are_refused(tmp_path):
    path = tmp_path / "cat.1.jpg"
    path.write_bytes(bomb_png_bytes(10_000, 10_000))  # above PIL's limit, below twice it
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(path, 16)


def test_png_named_jpg_decodes(tmp_path):
    write_bad_files(tmp_path)
    assert load_image(tmp_path / "cat.9005.jpg", 8).shape == (8, 8, 3)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Kaggle layout with PER_CLASS good images per class, 4 bad files and a PNG named .jpg."""
    write_images(tmp_path / "train", PER_CLASS)
    write_bad_files(tmp_path / "train")
    return tmp_path


def test_cache_skips_and_counts_bad_files(messy_folder, capsys):
    found = find_images(messy_folder)
    cache = load_or_build_cache(found, 12, messy_folder / "cache")
    n_good = 2 * PER_CLASS + 1
    assert cache.images.shape == (n_good, 12, 12, 3) and cache.images.dtype == np.uint8
    assert len(cache.skipped) == 4 and len(cache.paths) == len(cache.labels) == n_good
    assert capsys.readouterr().err.count("warning: skipping unreadable image") == 4
    for i, path in enumerate(cache.paths):
        np.testing.assert_array_equal(cache.images[i], load_image(path, 12))
        assert cache.labels[i] == int(Path(path).name.startswith("dog"))


def test_cache_is_reused_memory_mapped(messy_folder, monkeypatch):
    found = find_images(messy_folder)
    built = load_or_build_cache(found, 12, messy_folder / "cache")

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "load_image", no_decoding)
    loaded = load_or_build_cache(find_images(messy_folder), 12, messy_folder / "cache")
    assert isinstance(loaded.images, np.memmap) and loaded.file == built.file
    np.testing.assert_array_equal(loaded.images, built.images)
    assert loaded.skipped == built.skipped


@pytest.mark.parametrize("change", ["add", "modify", "size"])
def test_stale_cache_is_rebuilt(messy_folder, change):
    cache_dir = messy_folder / "cache"
    old = load_or_build_cache(find_images(messy_folder), 12, cache_dir)
    size = 12
    if change == "add":
        solid_image(1, "RGB", (30, 30)).save(messy_folder / "train" / "dog.100.jpg")
    elif change == "modify":
        path = messy_folder / "train" / "cat.0.jpg"
        solid_image(1, "RGB", (30, 30)).save(path)  # now orange
        os.utime(path, ns=(1, 1))  # even with an old mtime, the size differs
    else:
        size = 10
    new = load_or_build_cache(find_images(messy_folder), size, cache_dir)
    assert new.file != old.file
    if change == "add":
        assert len(new.paths) == len(old.paths) + 1
        assert not old.file.exists()  # the stale cache is gone
    elif change == "modify":
        assert new.images[0].mean(axis=(0, 1))[0] > 200  # rebuilt from the new pixels
    else:
        assert new.images.shape[1:] == (10, 10, 3) and old.file.exists()


def test_cached_images_dataset_maps_the_file_in_each_process(messy_folder):
    cache = load_or_build_cache(find_images(messy_folder), 12, messy_folder / "cache")
    dataset = CachedImages(cache, [3, 0])
    image, label = dataset[0]
    assert image.dtype == torch.uint8 and image.shape == (12, 12, 3)
    assert torch.equal(image, torch.from_numpy(np.array(cache.images[3])))
    assert label == cache.labels[3]
    assert len(pickle.dumps(dataset)) < 2_000  # workers get the file name, not the pixels


def test_parallel_decoding_matches_serial(messy_folder):
    found = find_images(messy_folder)
    serial = load_or_build_cache(found, 12, messy_folder / "a", workers=0)
    parallel = load_or_build_cache(found, 12, messy_folder / "b", workers=2)
    np.testing.assert_array_equal(serial.images, parallel.images)
    assert serial.skipped == parallel.skipped


# --------------------------------------------------------------------------- split, demo


def test_stratified_split_is_seeded_and_balanced():
    labels = np.array([0] * 30 + [1] * 70)
    train, val = stratified_split(labels, 0.1, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))
    assert np.bincount(labels[val]).tolist() == [3, 7]
    again, _ = stratified_split(labels, 0.1, seed=3)
    other, _ = stratified_split(labels, 0.1, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_subsample_keeps_classes_in_proportion(tmp_path):
    write_images(tmp_path / "train", 10)
    found = find_images(tmp_path)
    small = subsample(found, 6, seed=0)
    assert small.class_counts() == [3, 3]
    assert set(small.paths) <= set(found.paths)


def test_demo_dataset_is_found_and_kept(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", per_class=4)
    found = find_images(root)
    assert found.layout == "kaggle" and found.class_counts() == [4, 4]
    mtimes = [p.stat().st_mtime_ns for p in found.paths]
    write_demo_dataset(tmp_path / "demo", per_class=4)
    assert [p.stat().st_mtime_ns for p in found.paths] == mtimes


# --------------------------------------------------------------------------- augmentation


def test_random_crop_flip_gives_reflect_padded_crops():
    padding, size = 2, 6
    images = torch.randint(0, 256, (16, size, size, 3), dtype=torch.uint8)
    out = random_crop_flip(images, padding, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    flips = 0
    for image, result in zip(images.numpy(), out.numpy(), strict=True):
        padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
        candidates = {
            (dy, dx, flip): crop[:, ::-1] if flip else crop
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            for flip in (False, True)
            for crop in [padded[dy : dy + size, dx : dx + size]]
        }
        matches = [key for key, crop in candidates.items() if np.array_equal(crop, result)]
        assert matches, "output is not a reflect-padded crop of its input"
        flips += matches[0][2]
    assert 0 < flips < 16  # both flipped and unflipped images occur


def _ramp_images(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size): channel 0 holds each pixel's column, 1 its row, 2 a constant."""
    index = torch.arange(size, dtype=torch.float64)
    columns = index.expand(size, size)
    return torch.stack((columns, columns.T, torch.full_like(columns, 7.0))).expand(n, 3, size, size)


def test_random_resized_crop_zooms_into_a_box_inside_the_image():
    """On a ramp image the output is the ramp again, with slope = the box's share of the width
    (height) and offset = its edge: the boxes lie inside the image, cover at least min_scale
    of its area, keep their aspect ratio within 3:4 to 4:3 and take both extremes."""
    n, size, min_scale = 512, 16, 0.3
    out = random_resized_crop(_ramp_images(n, size), min_scale, torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, size, size) and out.dtype == torch.float64
    torch.testing.assert_close(out[:, 2], torch.full_like(out[:, 2], 7.0))
    boxes = []
    for ramp in (out[:, 0], out[:, 1].transpose(1, 2)):  # along the width, then the height
        torch.testing.assert_close(ramp, ramp[:, :1].expand_as(ramp))  # the same in every row
        inner = ramp[:, 0, 1:-1]  # away from the border pixels, which extend outwards
        slope = (inner[:, -1] - inner[:, 0]) / (size - 3)
        start = inner[:, 0] - slope  # the value at output pixel 0, had it not been clamped
        k = torch.arange(1, size - 1, dtype=torch.float64)
        torch.testing.assert_close(inner, start[:, None] + slope[:, None] * k)
        first_edge, last_edge = start - slope / 2 + 0.5, start + (size - 0.5) * slope + 0.5
        assert bool((first_edge >= -1e-9).all() and (last_edge <= size + 1e-9).all())
        assert bool((slope > 0).all() and (slope <= 1 + 1e-9).all())
        boxes.append(slope)
    share_w, share_h = boxes
    area, aspect = share_w * share_h, share_w / share_h
    assert bool((area >= min_scale - 1e-9).all())
    assert float(area.min()) < min_scale + 0.05 and float(area.max()) > 0.95
    unclipped = (share_w < 1) & (share_h < 1)
    assert bool(
        (aspect[unclipped] >= 3 / 4 - 1e-9).all() and (aspect[unclipped] <= 4 / 3 + 1e-9).all()
    )
    assert float(aspect[unclipped].min()) < 0.8 and float(aspect[unclipped].max()) > 1.25


@pytest.mark.parametrize("channels_last", [False, True])
def test_random_resized_crop_keeps_the_layout_and_is_seeded(channels_last):
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=layout)
    out = random_resized_crop(x, 0.5, torch.Generator().manual_seed(1))
    assert out.is_contiguous(memory_format=layout)
    torch.testing.assert_close(out, random_resized_crop(x, 0.5, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, random_resized_crop(x, 0.5, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("min_scale", [0.0, -0.5, 1.5])
def test_random_resized_crop_refuses_a_scale_outside_0_1(min_scale):
    with pytest.raises(ValueError, match="min_scale must be in"):
        random_resized_crop(torch.zeros(1, 3, 4, 4), min_scale, torch.Generator())


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize(channels_last):
    images = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8)
    x = normalize(images, channels_last)
    assert x.shape == (2, 3, 5, 4) and x.dtype == torch.float32
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=layout)
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.STD).view(1, 3, 1, 1)
    expected = (images.permute(0, 3, 1, 2).double() / 255 - mean) / std
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=1e-5)
