"""Dogs-vs-cats data: finding the images, decoding them robustly, the uint8 cache, batches.

Layouts found under the data folder (default ``tmp/``); labels are cat = 0, dog = 1:

* Kaggle's ``train/cat.<n>.jpg`` and ``train/dog.<n>.jpg``;
* the zips as downloaded, ``train.zip`` or ``dogs-vs-cats.zip`` (which holds ``train.zip`` and
  ``test1.zip``), extracted once, safely, next to themselves;
* Microsoft's ``PetImages/Cat`` and ``PetImages/Dog`` (also one folder down, as its zip
  extracts: ``kagglecatsanddogs_5340/PetImages/``);
* class folders ``train/cat/`` and ``train/dog/``, or ``cat/`` and ``dog/`` in the data folder.

Names are matched without regard to case: ``cat.0.jpg``, ``Dog.12.JPG``; class folders
``cat``, ``cats``, ``Cat``, ``CATS``, ``dog``, ``dogs``, ``Dog``, ``DOGS``.

Every image is decoded once into a ``(N, size, size, 3)`` uint8 array saved under
``<data>/cache/`` and memory-mapped afterwards, so an epoch never decodes a JPEG. Batches
leave the loader as uint8 NHWC tensors; :func:`random_crop_flip`, :func:`normalize` and
:func:`random_resized_crop` then run on whichever device trains.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps
from torch import Tensor
from torch.nn import functional as F
from tqdm import tqdm

from fastconv.atomic import atomic_write_text

__all__ = [
    "CLASS_NAMES",
    "BadImageError",
    "CachedImages",
    "DataNotFoundError",
    "ImageCache",
    "ImageList",
    "decode_images",
    "find_images",
    "label_from_name",
    "list_image_files",
    "load_image",
    "load_or_build_cache",
    "normalize",
    "random_crop_flip",
    "random_resized_crop",
    "safe_extract_zip",
    "stratified_split",
    "subsample",
    "write_demo_dataset",
]

CLASS_NAMES = ("cat", "dog")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CLASS_FOLDER_NAMES = {"cat": 0, "cats": 0, "dog": 1, "dogs": 1}
KAGGLE_NAME = re.compile(r"^(cat|dog)\.", re.IGNORECASE)
ZIP_NAMES = ("dogs-vs-cats.zip", "train.zip", "test1.zip")
CACHE_VERSION = 1
# ImageNet statistics: the usual choice for natural photographs.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

NO_DATA_HELP = """\
No dogs-vs-cats training images found under {data}/.
Get Kaggle's data from https://www.kaggle.com/c/dogs-vs-cats (accept the competition rules
first), for example with the Kaggle CLI:
    kaggle competitions download -c dogs-vs-cats -p {data}
and leave dogs-vs-cats.zip (or train.zip) in {data}/: it is extracted on the first run.
Also accepted: {data}/train/cat.0.jpg ..., {data}/train/cat/ + {data}/train/dog/
({data}/cat/ + {data}/dog/, cats/dogs, any case),
or Microsoft's {data}/PetImages/Cat + {data}/PetImages/Dog.
To see the pipeline work on generated images instead: python -m fastconv.train --demo"""


class DataNotFoundError(FileNotFoundError):
    """No usable dogs-vs-cats images under the data folder; the message says what to do."""


class BadImageError(ValueError):
    """A file that cannot be decoded into an image (empty, truncated, not an image, a bomb)."""


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ImageList:
    """Image files and their labels (0 = cat, 1 = dog), as found on disk."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    layout: str  # "kaggle", "class folders" or "PetImages"
    root: Path  # the folder the images were found in

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()


def list_image_files(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) with an image suffix, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_from_name(name: str) -> int | None:
    """The label a Kaggle file name carries (``cat.12.jpg`` -> 0, ``Dog.3.png`` -> 1), or None."""
    match = KAGGLE_NAME.match(name)
    return CLASS_FOLDER_NAMES[match.group(1).lower()] if match else None


def _kaggle_layout(folder: Path) -> tuple[list[Path], list[int]] | None:
    """``cat.<n>.jpg`` / ``dog.<n>.jpg`` files directly in ``folder``."""
    paths, labels = [], []
    for path in list_image_files(folder):
        label = label_from_name(path.name)
        if label is not None:
            paths.append(path)
            labels.append(label)
    return (paths, labels) if paths else None


def _class_folder_layout(folder: Path) -> tuple[list[Path], list[int]] | None:
    """Sub-folders named cat/cats/Cat and dog/dogs/Dog inside ``folder``."""
    paths, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = CLASS_FOLDER_NAMES.get(sub.name.lower())
        if label is not None:
            files = list_image_files(sub)
            paths += files
            labels += [label] * len(files)
    return (paths, labels) if paths else None


def _scan(data_dir: Path) -> ImageList | None:
    candidates = [
        (data_dir / "train", _kaggle_layout, "kaggle"),
        (data_dir / "train", _class_folder_layout, "class folders"),
        (data_dir, _kaggle_layout, "kaggle"),
        (data_dir, _class_folder_layout, "class folders"),
        (data_dir / "PetImages", _class_folder_layout, "PetImages"),
        *((p, _class_folder_layout, "PetImages") for p in sorted(data_dir.glob("*/PetImages"))),
    ]
    for folder, scan, layout in candidates:
        if folder.is_dir() and (found := scan(folder)):
            paths, labels = found
            return ImageList(paths, np.asarray(labels, dtype=np.int64), layout, folder)
    return None


def safe_extract_zip(zip_path: Path, dest: Path) -> None:
    """Extract ``zip_path`` into ``dest`` atomically per top-level entry, refusing unsafe paths.

    Members with absolute paths or ``..`` raise ValueError before anything is written.
    Entries are extracted into a temporary folder inside ``dest`` and moved into place,
    so an interrupted extraction never looks complete. A zip of loose image files lands in
    ``dest/<zip stem>/``; otherwise each top-level entry lands in ``dest/`` unless present.
    """
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            member = PurePosixPath(name.replace("\\", "/"))
            if member.is_absolute() or ".." in member.parts or re.match(r"^[A-Za-z]:", name):
                raise ValueError(f"refusing to extract {zip_path}: unsafe member path {name!r}")
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{zip_path.stem}-", dir=dest))
        try:
            archive.extractall(staging)
            entries = list(staging.iterdir())
            if any(e.is_file() and e.suffix.lower() in IMAGE_SUFFIXES for e in entries):
                os.replace(staging, dest / zip_path.stem)
                return
            for entry in entries:
                if not (dest / entry.name).exists():
                    os.replace(entry, dest / entry.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _extract_downloads(data_dir: Path) -> bool:
    """Extract the Kaggle zips found in ``data_dir`` whose contents are missing; True if any."""
    extracted = False
    for name in ZIP_NAMES:  # dogs-vs-cats.zip first: it holds the other two
        zip_path = data_dir / name
        targets = [data_dir / "train", data_dir / "train.zip"] if name == ZIP_NAMES[0] else []
        targets = targets or [data_dir / zip_path.stem]
        if zip_path.is_file() and not any(t.exists() for t in targets):
            tqdm.write(f"extracting {zip_path} ...")
            try:
                safe_extract_zip(zip_path, data_dir)
            except (zipfile.BadZipFile, ValueError) as exc:
                raise DataNotFoundError(f"cannot extract {zip_path}: {exc}") from exc
            extracted = True
    return extracted


def find_images(data_dir: str | os.PathLike) -> ImageList:
    """Find the training images under ``data_dir`` in any supported layout.

    Raises :class:`DataNotFoundError` (with instructions) when there are none, or when one
    of the two classes is missing.
    """
    data_dir = Path(data_dir)
    found = _scan(data_dir) if data_dir.is_dir() else None
    if found is None and data_dir.is_dir() and _extract_downloads(data_dir):
        found = _scan(data_dir)
    if found is None:
        raise DataNotFoundError(NO_DATA_HELP.format(data=data_dir.as_posix().rstrip("/")))
    missing = [name for name, n in zip(CLASS_NAMES, found.class_counts(), strict=True) if n == 0]
    if missing:
        raise DataNotFoundError(
            f"found {len(found.paths)} images in {found.root} but no {' or '.join(missing)} "
            f"images; both classes are needed.\n" + NO_DATA_HELP.format(data=data_dir.as_posix())
        )
    return found


def subsample(images: ImageList, limit: int, seed: int) -> ImageList:
    """At most ``limit`` images, the classes kept in proportion, drawn with ``seed``."""
    if limit >= len(images.paths):
        return images
    keep, _ = stratified_split(images.labels, 1 - limit / len(images.paths), seed)
    keep = np.sort(keep)
    return ImageList(
        [images.paths[i] for i in keep], images.labels[keep], images.layout, images.root
    )


# --------------------------------------------------------------------------- decoding


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white (RGBA, LA, PA, palette with transparency)."""
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode ``path`` into a ``(size, size, 3)`` uint8 RGB array.

    JPEGs are downscaled while decoding (``draft``), EXIF orientation is applied, grayscale,
    palette, CMYK and alpha images become RGB, and the result is resized to a square.
    Raises :class:`BadImageError` for any file that cannot be decoded, including
    decompression bombs (PIL's limit stays on; its warning counts as a bomb too).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Possibly corrupt EXIF data": harmless
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (size, size))
                upright = ImageOps.exif_transpose(img)
                rgb = _to_rgb(upright)
                square = rgb.resize((size, size), Image.Resampling.BILINEAR)
                return np.array(square, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types on malformed files
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line
        raise BadImageError(f"{path}: {reason}") from exc


def _ignore_ctrl_c() -> None:
    """Decoding processes leave Ctrl-C to the main process, which stops them (no tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = args
    try:
        return load_image(path, size), None
    except BadImageError as exc:
        return None, str(exc)


def decode_images(
    paths: Sequence[Path], size: int, workers: int, desc: str = "decoding"
) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """``(array, None)`` or ``(None, reason)`` for each path, in order, with a progress bar.

    ``workers`` > 0 decodes in that many processes (at most one per file); 0 decodes in this
    one. Stopping early (Ctrl-C, or the caller closing the generator) cancels the images not
    decoded yet.
    """
    jobs = [(str(p), size) for p in paths]
    bar = tqdm(total=len(jobs), desc=desc, unit="img", dynamic_ncols=True)
    try:
        if workers > 0 and len(jobs) > 1:
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)), initializer=_ignore_ctrl_c
            )
            try:
                for result in pool.map(_decode, jobs, chunksize=32):
                    bar.update()
                    yield result
            finally:
                pool.shutdown(cancel_futures=True)
        else:
            for job in jobs:
                bar.update()
                yield _decode(job)
    finally:
        bar.close()


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class ImageCache:
    """Decoded images: ``images`` (N, size, size, 3) uint8, memory-mapped from ``file``."""

    images: np.ndarray
    labels: np.ndarray  # (N,) int64
    paths: list[str]
    skipped: list[str]  # one "path: reason" per file that could not be decoded
    file: Path


def _cache_key(images: ImageList, size: int) -> str:
    """Hash of the file list (paths, names, sizes, mtimes, labels) and the size.

    A file counts both by where it resolves to and by the name it is listed under (which the
    cache records): renaming a symlink changes the second only.
    """
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{size}|".encode())
    for path, label in zip(images.paths, images.labels.tolist(), strict=True):
        stat = path.stat()
        file = f"{path.resolve()}|{path.name}|{stat.st_size}|{stat.st_mtime_ns}|{label}"
        digest.update(f"{file}\n".encode())
    return digest.hexdigest()


def _load_cache(npy: Path, meta: Path, key: str, size: int) -> ImageCache | None:
    try:
        info = json.loads(meta.read_text())
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if info.get("key") != key or array.shape != (len(info["paths"]), size, size, 3):
        return None
    labels = np.asarray(info["labels"], dtype=np.int64)
    return ImageCache(array, labels, info["paths"], info["skipped"], npy)


def _build_cache(
    images: ImageList, size: int, npy: Path, meta: Path, key: str, workers: int
) -> ImageCache:
    tmp_full = npy.with_name(f".{npy.name}.{os.getpid()}.tmp.npy")
    tmp_kept = npy.with_name(f".{npy.name}.{os.getpid()}.kept.npy")
    shape = (len(images.paths), size, size, 3)
    try:
        out = np.lib.format.open_memmap(tmp_full, mode="w+", dtype=np.uint8, shape=shape)
        kept, skipped = [], []
        decoded = decode_images(images.paths, size, workers, desc=f"caching {size}px")
        for i, (array, error) in enumerate(decoded):
            if array is None:
                tqdm.write(f"warning: skipping unreadable image {error}", file=sys.stderr)
                skipped.append(error)
            else:
                out[len(kept)] = array
                kept.append(i)
        out.flush()
        if skipped:  # compact: the file holds the decodable images only
            compact = np.lib.format.open_memmap(
                tmp_kept, mode="w+", dtype=np.uint8, shape=(len(kept), size, size, 3)
            )
            compact[:] = out[: len(kept)]
            compact.flush()
            del compact
            os.replace(tmp_kept, tmp_full)
        del out
        os.replace(tmp_full, npy)
    finally:
        for tmp in (tmp_full, tmp_kept):
            tmp.unlink(missing_ok=True)
    info = {
        "key": key,
        "size": size,
        "root": str(images.root),
        "paths": [str(images.paths[i]) for i in kept],
        "labels": images.labels[kept].tolist(),
        "skipped": skipped,
    }
    atomic_write_text(meta, json.dumps(info))
    return ImageCache(np.load(npy, mmap_mode="r"), images.labels[kept], info["paths"], skipped, npy)


def load_or_build_cache(
    images: ImageList,
    size: int,
    cache_dir: str | os.PathLike,
    name: str = "train",
    workers: int = 0,
) -> ImageCache:
    """The images decoded at ``size`` px, memory-mapped from ``cache_dir``; built if missing.

    The cache is keyed by the file list (paths, sizes, mtimes) and ``size``: when files are
    added or changed the key changes, the cache is rebuilt, and the stale cache of the same
    ``name`` and size is deleted. Files are written to a temporary name and renamed.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(images, size)
    stem = f"{name}-{size}px-"
    npy, meta = cache_dir / f"{stem}{key[:16]}.npy", cache_dir / f"{stem}{key[:16]}.json"
    if (cache := _load_cache(npy, meta, key, size)) is not None:
        return cache
    stale = [p for p in cache_dir.glob(f"{stem}*") if p not in (npy, meta)]
    if stale:
        tqdm.write(f"cache in {cache_dir} is stale (files added or changed): rebuilding")
    cache = _build_cache(images, size, npy, meta, key, workers)
    for path in stale:
        path.unlink(missing_ok=True)
    return cache


# --------------------------------------------------------------------------- split, batches


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: each class split ``1 - val_fraction : val_fraction``.

    Every class keeps at least one image on each side; the same ``seed`` gives the same split.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if len(members) < 2:
            raise ValueError(f"class {label} has {len(members)} image(s); a split needs >= 2")
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class CachedImages(torch.utils.data.Dataset):
    """``(image, label)`` pairs from a cache file: image (size, size, 3) uint8, label int.

    Holds the file name, not the array, so that worker processes map the file themselves.
    """

    def __init__(self, cache: ImageCache, indices: Iterable[int]) -> None:
        self.file = cache.file
        self.labels = cache.labels
        self.indices = np.asarray(list(indices), dtype=np.int64)
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if self._images is None:
            self._images = np.load(self.file, mmap_mode="r")
        j = self.indices[i]
        return torch.from_numpy(np.array(self._images[j])), int(self.labels[j])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random ``padding``-px shifted crop (reflect padding) and horizontal flip per image.

    ``images`` (N, H, W, C) uint8 on any device -> (N, H, W, C), one gather, no padded copy.
    """
    n, h, w, _ = images.shape
    device = images.device

    def reflect(index: Tensor, length: int) -> Tensor:
        return (length - 1) - ((length - 1) - index.abs()).abs()

    shift = torch.randint(-padding, padding + 1, (2, n, 1), device=device, generator=generator)
    rows = reflect(torch.arange(h, device=device) + shift[0], h)  # (N, H)
    cols = reflect(torch.arange(w, device=device) + shift[1], w)  # (N, W)
    flip = torch.rand((n, 1), device=device, generator=generator) < 0.5
    cols = torch.where(flip, (w - 1) - cols, cols)
    batch = torch.arange(n, device=device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def random_resized_crop(
    x: Tensor,
    min_scale: float,
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """Per image, a random box resized back to the full image (bilinear): a random zoom.

    ``x`` (N, C, H, W) float -> (N, C, H, W) in ``x``'s memory format. Each box covers a share
    ``s ~ U[min_scale, 1]`` of the image's area with aspect ratio ``r`` (width / height),
    ``log r ~ U[log ratio[0], log ratio[1]]``: in the image's [-1, 1] coordinates its
    half-sizes are ``(sqrt(s r), sqrt(s / r))``, each clipped to 1, and its centre is uniform
    over the places where it lies inside the image. Output pixel ``(u, v)`` in those
    coordinates reads the input at ``centre + half_size * (u, v)`` (``F.grid_sample``,
    ``align_corners=False``; the border pixels extend outwards).
    """
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    n = x.shape[0]
    layout = (
        torch.channels_last
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    uniform = torch.rand((2, n), device=x.device, generator=generator)
    area = min_scale + (1 - min_scale) * uniform[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform[1])
    half_w = torch.sqrt(area * aspect).clamp(max=1)
    half_h = torch.sqrt(area / aspect).clamp(max=1)
    centre = (2 * torch.rand((2, n), device=x.device, generator=generator) - 1) * torch.stack(
        (1 - half_w, 1 - half_h)
    )
    theta = torch.zeros((n, 2, 3), device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = half_w, centre[0]
    theta[:, 1, 1], theta[:, 1, 2] = half_h, centre[1]
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=layout)


def normalize(images: Tensor, channels_last: bool = False) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) standardized with ImageNet statistics.

    With ``channels_last`` the result keeps the NHWC memory layout it already has.
    """
    x = images.permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    x = (x - mean) / std
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=layout)


# --------------------------------------------------------------------------- demo data


def _demo_image(label: int, rng: np.random.Generator) -> Image.Image:
    """Cats: bluish circles; dogs: orange squares; on a noisy background of random size."""
    width, height = (int(v) for v in rng.integers(48, 160, size=2))
    noise = rng.integers(60, 196, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    radius = int(rng.integers(min(width, height) // 5, min(width, height) // 2.5))
    cx = int(rng.integers(radius, width - radius + 1))
    cy = int(rng.integers(radius, height - radius + 1))
    jitter = rng.integers(-30, 31, size=3)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if label == 0:
        color = tuple(int(c) for c in np.clip(np.array([60, 90, 220]) + jitter, 0, 255))
        draw.ellipse(box, fill=color)
    else:
        color = tuple(int(c) for c in np.clip(np.array([230, 140, 40]) + jitter, 0, 255))
        draw.rectangle(box, fill=color)
    return img


def write_demo_dataset(root: str | os.PathLike, per_class: int = 200, seed: int = 0) -> Path:
    """Write ``per_class`` synthetic JPEGs per class to ``root/train/`` named like Kaggle's.

    Cats are bluish circles, dogs orange squares, so a few epochs separate them. Kept if a
    complete set is already there. Returns ``root``.
    """
    root = Path(root)
    marker = root / f".complete-{per_class}-{seed}"
    if marker.exists():
        return root
    train = root / "train"
    shutil.rmtree(train, ignore_errors=True)
    train.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(per_class):
        for label, name in enumerate(CLASS_NAMES):
            _demo_image(label, rng).save(train / f"{name}.{i}.jpg", quality=90)
    marker.touch()
    return root
