"""The CPU data pipeline: JPEG decode + resize to the training size, and reading the cache.

Runs on a few hundred synthetic JPEGs of Kaggle-like sizes (300-500 px wide), written once
per session into a temporary folder in the Kaggle layout (``train/cat.<n>.jpg``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.timing import benchmark_cpu
from fastconv.data import (
    CLASS_NAMES,
    CachedImages,
    decode_images,
    find_images,
    load_image,
    load_or_build_cache,
)

N_IMAGES = 256
IMAGE_SIZES = (64, 128)  # the model's training sizes
WORKERS = (0, min(os.cpu_count() or 1, 4))
CACHE_PASSES = 16  # each cache-reading round reads every cached image this many times
LOADER_BATCH = 64


def _synthetic_photo(rng: np.random.Generator) -> Image.Image:
    """A smooth colour field with mild noise: compresses and decodes like a photograph."""
    width, height = int(rng.integers(300, 500)), int(rng.integers(240, 400))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * np.pi, size=3)
    freqs = rng.uniform(0.005, 0.03, size=(3, 2))
    channels = [
        127 + 100 * np.sin(fx * xs + fy * ys + phase)
        for (fx, fy), phase in zip(freqs, phases, strict=True)
    ]
    noise = rng.normal(0, 8, size=(height, width, 3))
    pixels = np.clip(np.stack(channels, axis=-1) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="session")
def jpeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with ``N_IMAGES`` synthetic JPEGs in Kaggle's ``train/`` layout."""
    root = tmp_path_factory.mktemp("jpegs")
    train = root / "train"
    train.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        name = CLASS_NAMES[i % 2]
        _synthetic_photo(rng).save(train / f"{name}.{i}.jpg", quality=90)
    return root


@pytest.mark.parametrize("workers", WORKERS, ids=lambda n: f"{n}workers")
@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s}px")
def test_decode_resize(benchmark, jpeg_root, size, workers):
    images = find_images(jpeg_root)
    paths = images.paths

    def decode_all() -> list[np.ndarray]:
        arrays = []
        for array, error in decode_images(paths, size, workers):
            if error is not None:
                raise AssertionError(f"synthetic JPEG failed to decode: {error}")
            arrays.append(array)
        return arrays

    arrays = decode_all()
    assert len(arrays) == len(paths)
    for i in (0, len(paths) // 2, len(paths) - 1):
        np.testing.assert_array_equal(arrays[i], load_image(paths[i], size))
        assert arrays[i].shape == (size, size, 3) and arrays[i].dtype == np.uint8

    benchmark.group = f"data decode+resize {size}px"
    seconds = benchmark_cpu(benchmark, decode_all, tuple, rounds=3, warmup_rounds=0)
    benchmark.extra_info.update(
        kind="data",
        case=f"decode+resize {size}px",
        shape=f"{len(paths)} JPEGs of 300-500 x 240-400 px -> {size}x{size}x3 uint8",
        mode=f"{workers} workers" if workers else "1 process",
        provider="fastconv.data",
        images_per_s=len(paths) / seconds,
    )


@pytest.fixture(scope="session")
def cache_64px(jpeg_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The synthetic JPEGs decoded once into the 64 px uint8 cache."""
    return load_or_build_cache(find_images(jpeg_root), 64, tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize("workers", WORKERS, ids=lambda n: f"{n}workers")
def test_read_cache(benchmark, cache_64px, workers):
    n_cached = len(cache_64px.labels)
    assert n_cached == N_IMAGES and not cache_64px.skipped
    np.testing.assert_array_equal(cache_64px.images[3], load_image(cache_64px.paths[3], 64))
    indices = np.tile(np.arange(n_cached), CACHE_PASSES)
    loader = torch.utils.data.DataLoader(
        CachedImages(cache_64px, indices), batch_size=LOADER_BATCH, num_workers=workers
    )

    def read_all() -> int:
        return sum(len(labels) for _, labels in loader)

    assert read_all() == len(indices)
    benchmark.group = "data read cache 64px"
    seconds = benchmark_cpu(benchmark, read_all, tuple, rounds=5, warmup_rounds=1)
    benchmark.extra_info.update(
        kind="data",
        case="read cache 64px",
        shape=f"{len(indices)} images of 64x64x3 uint8, batches of {LOADER_BATCH}",
        mode=f"{workers} workers" if workers else "1 process",
        provider="fastconv.data",
        images_per_s=len(indices) / seconds,
    )
