"""Image bytes -> RGB PIL image sized for Qwen2-VL, or an ImageError with a specific reason."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from qwen_vl_utils import smart_resize

from rococap.errors import ImageError

# Qwen2-VL: 14 px patches merged 2x2, so sides are multiples of 28 px.
QWEN2VL_RESIZE_FACTOR_PX = 28
# Modes whose values are not 8-bit: scaled by their real range, never truncated.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_image(data: bytes | None) -> Image.Image:
    """Decode encoded image bytes into a fully loaded PIL image."""
    if data is None:
        raise ImageError("no image: the dataset row has a null image")
    if len(data) == 0:
        raise ImageError("empty image: the image has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(f"unrecognised image format ({len(data)} bytes, starts with {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB without losing the picture.

    16-bit and 32-bit grayscale is stretched from its real minimum to its real maximum (medical
    images rarely use the full range, so a plain conversion would turn them black or white).
    Transparent pixels are composited onto white, like Qwen2-VL's own preprocessing.
    """
    if image.mode in WIDE_MODES:
        return _stretch_to_rgb(np.asarray(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _stretch_to_rgb(values: np.ndarray) -> Image.Image:
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high > low:
        scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def resized_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (width, height) Qwen2-VL will see, or ImageError if its resize rules reject the image."""
    try:
        new_height, new_width = smart_resize(
            height, width, factor=QWEN2VL_RESIZE_FACTOR_PX, min_pixels=min_pixels, max_pixels=max_pixels
        )
    except (ValueError, ZeroDivisionError) as exc:
        raise ImageError(f"unusable image size {width}x{height} for Qwen2-VL: {exc}") from None
    if new_height < QWEN2VL_RESIZE_FACTOR_PX or new_width < QWEN2VL_RESIZE_FACTOR_PX:
        raise ImageError(
            f"unusable image size {width}x{height} for Qwen2-VL: resizes to {new_width}x{new_height}"
        )
    return new_width, new_height


def visual_tokens(data: bytes | None, min_pixels: int, max_pixels: int) -> int:
    """Qwen2-VL image tokens for these bytes, from the header alone (0 when unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        new_width, new_height = resized_size(width, height, min_pixels, max_pixels)
    except Exception:
        return 0
    return (new_width * new_height) // (QWEN2VL_RESIZE_FACTOR_PX * QWEN2VL_RESIZE_FACTOR_PX)


def prepare_image(data: bytes | None, min_pixels: int, max_pixels: int) -> Image.Image:
    """Bytes -> RGB image already resized to Qwen2-VL's grid, or ImageError."""
    image = decode_image(data)
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"unusable image size {width}x{height}")
    target = resized_size(width, height, min_pixels, max_pixels)
    rgb = to_rgb(image)
    if rgb.size != target:
        rgb = rgb.resize(target, resample=Image.Resampling.BICUBIC)
    return rgb
