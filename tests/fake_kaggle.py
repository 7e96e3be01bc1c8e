"""Generated stand-ins for Kaggle's dogs-vs-cats files, good and bad, for the data tests.

Cats are dark-blue images and dogs bright-orange ones, in every awkward form a real folder
holds: varied sizes, grayscale, palette, CMYK and RGBA modes, EXIF-rotated JPEGs, and
broken files (empty, truncated, text, decompression bomb).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from PIL import Image

CAT_RGB = (30, 40, 150)
DOG_RGB = (240, 160, 40)
MODES = ("RGB", "L", "P", "CMYK", "RGBA")
EXIF_ORIENTATION = 0x0112


def solid_image(label: int, mode: str, size: tuple[int, int]) -> Image.Image:
    """A solid cat (blue) or dog (orange) image of ``size`` (width, height) in ``mode``."""
    img = Image.new("RGB", size, DOG_RGB if label else CAT_RGB)
    if mode == "RGBA":
        return img.convert("RGBA")
    if mode == "P":
        return img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return img.convert(mode)


def write_images(folder: Path, per_class: int, prefix: bool = True) -> list[Path]:
    """``per_class`` good images of each class in ``folder``, cycling modes, sizes and EXIF.

    Names are Kaggle's (``cat.<n>.jpg``) when ``prefix``, else ``<n>.jpg``; RGBA and P
    images are PNGs (JPEG has no alpha or palette) under a .png name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(per_class):
        for label, name in enumerate(("cat", "dog")):
            mode = MODES[i % len(MODES)]
            size = (24 + 7 * i % 40, 20 + 11 * i % 36)
            suffix = ".png" if mode in ("RGBA", "P") else ".jpg"
            stem = f"{name}.{i}" if prefix else f"{2 * i + label + 1}"
            path = folder / f"{stem}{suffix}"
            img = solid_image(label, mode, size)
            if suffix == ".jpg" and i % 3 == 1:
                exif = Image.Exif()
                exif[EXIF_ORIENTATION] = 6  # stored rotated: viewers turn it 90 degrees
                img.save(path, exif=exif, quality=95)
            else:
                img.save(path)
            written.append(path)
    return written


def bomb_png_bytes(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` pixels: PIL refuses it as a bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def write_bad_files(folder: Path, prefix: bool = True) -> dict[str, Path]:
    """The broken files of a real download, named like images; returns them by kind.

    Plus a PNG named ``.jpg``, which is *not* bad: decoders look at the bytes, not the name.
    """
    folder.mkdir(parents=True, exist_ok=True)

    def name(n: int, animal: str) -> Path:
        return folder / (f"{animal}.{n}.jpg" if prefix else f"{n}.jpg")

    good_jpeg = name(9000, "dog")
    solid_image(1, "RGB", (64, 64)).save(good_jpeg, quality=95)
    truncated = good_jpeg.read_bytes()
    good_jpeg.unlink()
    files = {
        "empty": name(9001, "cat"),
        "truncated": name(9002, "dog"),
        "text": name(9003, "cat"),
        "bomb": name(9004, "dog"),
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(truncated[: len(truncated) // 2])
    files["text"].write_text("this is not an image\n")
    files["bomb"].write_bytes(bomb_png_bytes())
    png_as_jpg = name(9005, "cat")
    solid_image(0, "RGB", (30, 30)).save(png_as_jpg, format="PNG")
    return files


# --------------------------------------------------------------------------- CLI runs

# Small and fast: 32 px images, the small network, the torch reference backend (the Triton
# interpreter would take minutes), no worker processes.
FAST_TRAIN_FLAGS = (
    "--amp=off",  # float32 on every machine: --amp auto would pick bf16 on some CPUs only
    "--img-size=32",
    "--model=catdog-small",
    "--batch-size=16",
    "--lr=0.003",  # the synthetic shapes are learnt in 2 epochs at this rate
    "--warmup=0.3",  # and on this schedule (the default warm-up before 0.45)
    "--workers=0",
    "--backend=torch",
)


def cli_env() -> dict[str, str]:
    """The environment for CLI subprocesses: without TRITON_INTERPRET (auto -> torch on CPU)."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
