"""Every image mode becomes correct RGB; unusable images fail with a specific reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rococap.errors import ImageError
from rococap.images import prepare_image, to_rgb
from tests.fixtures.rocov2 import png_bytes

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 16384


def prepared(data: bytes) -> Image.Image:
    return prepare_image(data, MIN_PIXELS, MAX_PIXELS)


def gradient(width=112, height=84) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width, dtype=np.float64), (height, 1))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "JPEG"),
        ("1", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
    ],
)
def test_every_8bit_mode_becomes_rgb_and_keeps_the_picture(mode, fmt):
    gray = Image.fromarray(gradient().astype(np.uint8), mode="L")
    source = gray.convert(mode) if mode != "CMYK" else gray.convert("RGB").convert("CMYK")
    image = prepared(png_bytes(source, fmt))
    assert image.mode == "RGB"
    assert image.size == (112, 84)
    values = np.asarray(image.convert("L"), dtype=np.float64)
    # the left edge stays dark and the right edge bright, whatever the mode
    assert values[:, :8].mean() < 60 and values[:, -8:].mean() > 190


def test_16bit_grayscale_is_scaled_by_its_real_range_not_truncated():
    raw = (128 + gradient() / 255 * (2191 - 128)).astype(np.uint16)
    image = prepared(png_bytes(Image.fromarray(raw)))
    values = np.asarray(image.convert("L"))
    assert values.min() == 0 and values.max() == 255
    assert len(np.unique(values)) > 100  # a truncating conversion would leave one or two levels


def test_32bit_integer_image_is_scaled():
    raw = (gradient() * 1000 - 50000).astype(np.int32)
    image = to_rgb(Image.fromarray(raw, mode="I"))
    values = np.asarray(image)[..., 0]
    assert values[:, 0].max() == 0 and values[:, -1].min() == 255


def test_palette_with_transparency_is_composited_on_white():
    palette_image = Image.new("P", (60, 60), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_image.info["transparency"] = 0
    image = prepared(png_bytes(palette_image))
    assert np.asarray(image).min() == 255


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero bytes"),
        (None, "null image"),
        (bytes(range(256)) * 8, "unrecognised image format"),
    ],
)
def test_unusable_bytes_fail_with_a_specific_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        prepared(data)


def test_truncated_jpeg_fails_as_corrupt():
    jpeg = png_bytes(Image.fromarray(gradient().astype(np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        prepared(jpeg[: len(jpeg) // 2])


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="decompression bomb"):
        prepared(png_bytes(Image.new("L", (300, 300))))


def test_too_elongated_image_fails_with_qwen2vl_reason():
    with pytest.raises(ImageError, match="aspect ratio"):
        prepared(png_bytes(Image.new("L", (2010, 10))))


@pytest.mark.parametrize("side", [1, 12])
def test_tiny_images_are_upscaled_to_qwen2vl_minimum(side):
    image = prepared(png_bytes(Image.new("L", (side, side), 200)))
    assert image.size == (56, 56)


def test_large_image_is_capped_by_max_pixels():
    image = prepare_image(png_bytes(Image.new("L", (1400, 1000))), MIN_PIXELS, 512 * 28 * 28)
    width, height = image.size
    assert width * height <= 512 * 28 * 28
    assert width % 28 == 0 and height % 28 == 0


def test_decode_reads_real_bytes_not_paths():
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(buffer, "PNG")
    assert prepared(buffer.getvalue()).getpixel((0, 0)) == (10, 20, 30)
