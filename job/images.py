"""Which files are images, their labels, and decoding bytes into model-ready pixels.

Pure Python + Pillow + NumPy: no Spark and no TensorFlow here, so it is cheap to import
on every executor and to test alone.
"""

from __future__ import annotations

import io
import posixpath
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# Lower case; matching ignores case (".JPG", ".Png" are inputs too).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The same rule as a Spark SQL regex, so the driver can filter without a Python UDF.
IMAGE_PATH_REGEX = r"(?i)\.(jpe?g|png)$"


EMPTY_FILE_REASON = "empty file (0 bytes)"


class DecodeError(Exception):
    """An input that cannot become pixels; its message is the reason written to `errors`."""


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)



def label_of(path: str) -> str:
    """The image's label: the name of its parent folder.

    Spark's binaryFile paths are not URI-escaped ("file:/d/café au lait/x.jpg"), so the
    name is taken as is: a folder really named "a%20b" keeps its "%20".
    """
    return posixpath.basename(posixpath.dirname(path.rstrip("/")))


def decode(content: bytes | None, size: int) -> np.ndarray:
    """Bytes of a JPEG/PNG -> uint8 RGB array (size, size, 3); DecodeError with a reason.

    Pillow's decompression-bomb limit (~89 Mpx) is kept: one hostile file becomes one
    error row instead of an executor running out of memory.

    Grayscale, CMYK, palette and alpha images become RGB (alpha composited on white, as
    a viewer shows them). For JPEG, Pillow's draft mode lets libjpeg decode at 1/2, 1/4
    or 1/8 scale when that still covers `size`: a large photo costs a fraction of a full
    decode.
    """
    if not content:
        raise DecodeError(EMPTY_FILE_REASON)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(content))
            if img.format not in ("JPEG", "PNG"):
                raise DecodeError(f"not a JPEG or PNG image (format {img.format})")
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            img.load()
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised content)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data: Pillow raises OSError("image file is truncated ...").
        raise DecodeError(f"corrupt image: {exc}") from None
    return _to_rgb_array(img, size)


def _to_rgb_array(img: Image.Image, size: int) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif img.mode.startswith("I;16") or img.mode in ("I", "F"):
        # 16-bit / float grayscale: scale to 8 bits instead of clipping to white.
        arr = np.asarray(img, dtype=np.float32)
        peak = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / peak)).astype(np.uint8))  # 2-D uint8: mode L
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
