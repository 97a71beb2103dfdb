"""job/images.py without Spark: which files are inputs, labels, and decoding edge cases."""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "job"))
import images  # noqa: E402

SIZE = 64


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def red(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (220, 20, 30)).convert(mode)


@pytest.mark.parametrize("path, expected", [
    ("s3a://b/x/apple/1.jpg", True), ("file:/d/A.JPG", True), ("a.Jpeg", True),
    ("a.PNG", True), ("a.gif", False), ("a.jpg.txt", False), ("jpg", False), ("a.webp", False),
])
def test_image_extensions_any_case_and_the_spark_regex_agree(path: str, expected: bool) -> None:
    assert images.is_image_path(path) is expected
    assert bool(re.search(images.IMAGE_PATH_REGEX.replace("(?i)", ""), path, re.I)) is expected


def test_label_is_the_parent_folder_name_unescaped_as_spark_gives_it() -> None:
    assert images.label_of("file:/data/café au lait/ä b.jpg") == "café au lait"
    assert images.label_of("s3a://bucket/imgs/apple/1.jpg") == "apple"
    assert images.label_of("file:/d/a%20b/x.png") == "a%20b"


def test_rgb_jpeg_becomes_uint8_rgb_of_the_model_size() -> None:
    out = images.decode(encode(red(), "JPEG", quality=95), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert abs(int(out[..., 0].mean()) - 220) < 10 and out[..., 2].mean() < 50


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG"),
                                       ("P", "PNG"), ("I;16", "PNG")])
def test_other_colour_modes_become_rgb(mode: str, fmt: str) -> None:
    img = red(mode) if mode != "I;16" else Image.fromarray(
        np.full((30, 40), 40000, dtype=np.uint16))
    out = images.decode(encode(img, fmt), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    if mode == "I;16":  # scaled to 8 bits, not clipped to black or white garbage
        assert out.min() > 200


def test_png_alpha_is_composited_on_white() -> None:
    img = red("RGBA")
    img.putalpha(0)  # fully transparent red: a viewer shows white
    out = images.decode(encode(img, "PNG"), SIZE)
    assert out.min() >= 250


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"hello, I am a text file named .jpg\n", "not an image"),
    (b"GIF89a" + bytes(100), "not"),
])
def test_unusable_bytes_raise_decode_error_with_a_reason(content: bytes, reason: str) -> None:
    with pytest.raises(images.DecodeError, match=reason):
        images.decode(content, SIZE)


def test_truncated_jpeg_is_a_decode_error() -> None:
    data = encode(Image.effect_noise((200, 200), 60).convert("RGB"), "JPEG")
    with pytest.raises(images.DecodeError, match="corrupt image"):
        images.decode(data[: len(data) // 3], SIZE)


def test_gif_named_jpg_is_rejected_by_format() -> None:
    with pytest.raises(images.DecodeError, match="not a JPEG or PNG"):
        images.decode(encode(red("P"), "GIF"), SIZE)


def test_large_jpeg_decodes_at_reduced_scale_quickly() -> None:
    data = encode(red(size=(6000, 4000)), "JPEG", quality=80)
    start = time.perf_counter()
    out = images.decode(data, 224)
    elapsed = time.perf_counter() - start
    assert out.shape == (224, 224, 3)
    assert elapsed < 1.0  # draft mode: libjpeg decodes at 1/8 scale, not 24 Mpx


def test_decompression_bomb_is_an_error_not_an_oom() -> None:
    bomb = encode(Image.new("1", (20000, 10000)), "PNG")  # 200 Mpx, a few KB on disk
    with pytest.raises(images.DecodeError, match="too large"):
        images.decode(bomb, SIZE)
