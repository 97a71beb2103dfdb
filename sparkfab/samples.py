"""Deterministic sample images: fruit-like shapes, 100x100 JPEG, one folder per class.

Like Fruits-360 (one fruit on a white background), drawn rather than photographed so the
demo and the tests need no download: each class has its own shape and colour; size,
position, rotation, tint and sensor noise vary per image from a seeded generator, so the
same arguments always give byte-identical files.

    python -m sparkfab.samples --out .cache/samples --per-class 40
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 100  # pixels, as Fruits-360
SUPERSAMPLE = 3  # drawn large, then downsampled: smooth edges
DEFAULT_DIR = Path(".cache/samples")
DEFAULT_PER_CLASS = 40
STAMP = ".samples.json"  # what the folder was generated with; regenerated when it differs
GENERATOR_VERSION = 1

RGB = tuple[int, int, int]
Draw = Callable[[ImageDraw.ImageDraw, float, np.random.Generator, RGB], None]


def _jitter(color: RGB, rng: np.random.Generator, amount: int = 18) -> RGB:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)
    return (r, g, b)


def _lighter(color: RGB, f: float) -> RGB:
    r, g, b = (int(c + (255 - c) * f) for c in color)
    return (r, g, b)


def _darker(color: RGB, f: float) -> RGB:
    r, g, b = (int(c * (1 - f)) for c in color)
    return (r, g, b)


def _ball(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, color: RGB) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_darker(color, 0.25))
    d.ellipse((cx - r * 0.92, cy - r * 0.95, cx + r * 0.85, cy + r * 0.8), fill=color)
    hr = r * 0.28
    d.ellipse((cx - r * 0.5 - hr, cy - r * 0.5 - hr, cx - r * 0.5 + hr, cy - r * 0.5 + hr),
              fill=_lighter(color, 0.45))


def _apple(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    _ball(d, s * 0.5, s * 0.55, s * 0.33, c)
    d.line((s * 0.5, s * 0.25, s * 0.53, s * 0.12), fill=(90, 60, 20), width=int(s * 0.03))
    d.ellipse((s * 0.54, s * 0.12, s * 0.68, s * 0.19), fill=(60, 150, 50))


def _banana(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    box = (s * 0.1, s * 0.05, s * 0.9, s * 0.85)
    d.pieslice(box, 20, 160, fill=_darker(c, 0.2))
    inner = (s * 0.22, s * 0.0, s * 0.78, s * 0.62)
    d.pieslice(inner, 0, 180, fill=(255, 255, 255))
    d.ellipse((s * 0.14, s * 0.47, s * 0.2, s * 0.53), fill=(70, 50, 20))


def _orange(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    _ball(d, s * 0.5, s * 0.5, s * 0.38, c)
    for _ in range(60):  # dimpled peel
        x, y = rng.uniform(0.2, 0.8, 2) * s
        if (x - s * 0.5) ** 2 + (y - s * 0.5) ** 2 < (s * 0.33) ** 2:
            d.point((x, y), fill=_darker(c, 0.15))
    d.ellipse((s * 0.47, s * 0.1, s * 0.53, s * 0.15), fill=(80, 110, 40))


def _lime(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    d.ellipse((s * 0.2, s * 0.3, s * 0.8, s * 0.72), fill=_darker(c, 0.2))
    d.ellipse((s * 0.23, s * 0.32, s * 0.75, s * 0.66), fill=c)
    d.polygon([(s * 0.8, s * 0.51), (s * 0.88, s * 0.5), (s * 0.8, s * 0.47)], fill=c)
    d.ellipse((s * 0.3, s * 0.36, s * 0.42, s * 0.44), fill=_lighter(c, 0.4))


def _grapes(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    rows = [(0.3, 4), (0.42, 3), (0.54, 3), (0.66, 2), (0.78, 1)]
    r = s * 0.075
    for y, n in rows:
        for i in range(n):
            x = 0.5 + (i - (n - 1) / 2) * 0.155
            _ball(d, s * x, s * y, r, _jitter(c, rng, 10))
    d.line((s * 0.5, s * 0.22, s * 0.52, s * 0.08), fill=(90, 70, 30), width=int(s * 0.025))


def _strawberry(d: ImageDraw.ImageDraw, s: float, rng: np.random.Generator, c: RGB) -> None:
    d.polygon([(s * 0.2, s * 0.35), (s * 0.8, s * 0.35), (s * 0.5, s * 0.9)], fill=c)
    d.ellipse((s * 0.2, s * 0.22, s * 0.8, s * 0.55), fill=c)
    for _ in range(25):  # seeds
        x, y = s * rng.uniform(0.3, 0.7), s * rng.uniform(0.35, 0.7)
        d.ellipse((x - 2, y - 3, x + 2, y + 3), fill=(240, 220, 120))
    for k in range(5):  # calyx
        a = math.pi * (0.1 + 0.2 * k)
        d.line((s * 0.5, s * 0.24, s * (0.5 + 0.18 * math.cos(a)), s * (0.2 - 0.05 * math.sin(a))),
               fill=(40, 130, 40), width=int(s * 0.04))


# class name -> (drawing, base colour)
CLASSES: dict[str, tuple[Draw, RGB]] = {
    "apple": (_apple, (200, 30, 40)),
    "banana": (_banana, (240, 210, 60)),
    "orange": (_orange, (245, 140, 20)),
    "lime": (_lime, (110, 190, 50)),
    "grapes": (_grapes, (110, 40, 120)),
    "strawberry": (_strawberry, (220, 20, 60)),
}


def render(cls: str, index: int, seed: int = 0) -> Image.Image:
    """One sample image of class `cls`; the same arguments give the same pixels."""
    draw_fn, base = CLASSES[cls]
    rng = np.random.default_rng([seed, list(CLASSES).index(cls), index])
    big = SIZE * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), (255, 255, 255))
    draw_fn(ImageDraw.Draw(canvas), float(big), rng, _jitter(base, rng))
    scale = rng.uniform(0.75, 1.0)
    angle = rng.uniform(-35, 35)
    canvas = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    side = int(big * scale)
    small = canvas.resize((side, side), Image.Resampling.LANCZOS)
    frame = Image.new("RGB", (big, big), (255, 255, 255))
    dx, dy = (int(v) for v in rng.integers(0, big - side + 1, 2))
    frame.paste(small, (dx, dy))
    img = frame.resize((SIZE, SIZE), Image.Resampling.LANCZOS).filter(ImageFilter.SMOOTH)
    noise = rng.normal(0, 3.0, (SIZE, SIZE, 3))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def generate(out: Path = DEFAULT_DIR, per_class: int = DEFAULT_PER_CLASS, seed: int = 0) -> int:
    """Write `per_class` JPEGs per class under out/<class>/; skipped when already there.

    Returns the number of images in the set.
    """
    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    wanted = {"version": GENERATOR_VERSION, "per_class": per_class, "seed": seed,
              "classes": list(CLASSES)}
    stamp = out / STAMP
    total = per_class * len(CLASSES)
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return total
    stamp.unlink(missing_ok=True)
    for cls in CLASSES:
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
        for i in range(per_class):
            render(cls, i, seed).save(folder / f"{cls}_{i:04d}.jpg", quality=92)
    stamp.write_text(json.dumps(wanted) + "\n")  # last: a half-made set is regenerated
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder to fill")
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS,
                        help=f"images per class ({len(CLASSES)} classes)")
    parser.add_argument("--seed", type=int, default=0, help="another seed, other images")
    args = parser.parse_args(argv)
    n = generate(args.out, args.per_class, args.seed)
    print(f"samples: {n} images in {len(CLASSES)} classes under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
