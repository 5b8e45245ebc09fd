"""Loading image files as RGB PIL images, with errors that name the file.

Colour handling follows transformers' `image_transforms.convert_to_rgb` (the conversion both of
its CLIP/SigLIP image-processor backends apply): anything with transparency (an alpha band, or
a palette / RGB image with a `transparency` entry) is alpha-composited onto a white background;
everything else goes through PIL's `convert("RGB")`. open_clip's `_convert_to_rgb` /
`MaybeConvertMode` instead call `convert("RGB")` directly, which drops the alpha band and
keeps whatever colour the transparent pixels store (often black); for opaque images the two
agree exactly.

High-bit-depth images follow both references by default: PIL's `convert("RGB")` *clips*
16-bit and 32-bit values to 255 instead of scaling them, so a 16-bit PNG comes out almost
white, exactly as transformers and open_clip see it. `scale_to_8bit` (the opt-in
`rescale_high_bit_depth=True` here and in `PreprocessConfig`) scales them down instead.

Which conversion a model's transform applies, and whether before or after resizing, is the
transform's business (`vlkit.data.preprocess_pipelines`): `load_image(path, keep_mode=True)`
hands it the decoded image untouched.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageLoadError",
    "load_image",
    "load_image_bytes",
    "load_images",
    "scale_to_8bit",
    "to_rgb",
]

# File suffixes (lower case) treated as images when a folder is listed (indexing, embedding,
# ImageFolder evaluation).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Modes holding integer samples wider than 8 bits, and float samples.
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_FLOAT_MODES = ("F",)


class ImageLoadError(ValueError):
    """An image file is missing, is not an image, or has truncated / corrupt data."""


def scale_to_8bit(image: Image.Image) -> Image.Image:
    """Maps a single-band 16/32-bit integer or float image to an 8-bit "L" image.

    Other modes are returned unchanged. This is an opt-in: both references clip instead.

    The input range is inferred from the mode and, where the mode cannot tell, from the data:

    - "I;16*" (16-bit PNG/TIFF): `value / 257`, so 65535 -> 255.
    - "I" (32-bit signed; older Pillow opens 16-bit PNGs in this mode): treated as 16-bit when
      any value exceeds 255, else as already 8-bit.
    - "F" (32-bit float): treated as [0, 1] when every value is within it, else as [0, 255].

    Values outside the inferred range are clipped.
    """
    if image.mode not in _WIDE_INT_MODES and image.mode not in _FLOAT_MODES:
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.size and array.max() > 255):
        array = array / 257.0
    elif image.mode == "F" and array.size and array.min() >= 0.0 and array.max() <= 1.0:
        array = array * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image, rescale_high_bit_depth: bool = False) -> Image.Image:
    """Converts a PIL image of any mode to "RGB".

    Transparency is composited onto white exactly as transformers' `convert_to_rgb` does
    (transformers/image_transforms.py): a band named "A" or a `transparency` entry in
    `image.info` triggers `alpha_composite` over an opaque white RGBA background. Grayscale,
    palette, CMYK, YCbCr, bilevel, 16-bit, 32-bit integer and float images use PIL's own
    `convert("RGB")`, which clips values above 255 as both references do.

    Args:
        image: Any PIL image.
        rescale_high_bit_depth: Scale 16/32-bit and float images to 8 bits first
            (`scale_to_8bit`) instead of clipping.

    Returns:
        An "RGB" image (the input itself when it already is one without transparency).
    """
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    if rescale_high_bit_depth:
        image = scale_to_8bit(image)
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        # Premultiplied modes ("RGBa", "La") convert to straight alpha via "RGBA" first.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def load_image(path: str | os.PathLike[str], keep_mode: bool = False) -> Image.Image:
    """Reads an image file into memory as an RGB PIL image.

    The whole file is decoded here (`Image.load()`), so a truncated or corrupt file fails now
    rather than later inside a data loader. Truncated files are never accepted: this relies on
    PIL's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`, which this function leaves alone.
    The EXIF orientation tag is applied (`ImageOps.exif_transpose`), so photos come out the
    way viewers show them. Colours are converted by `to_rgb` unless `keep_mode` is set.

    Args:
        path: The image file.
        keep_mode: Return the decoded mode ("RGBA", "P", "I;16", ...) so that a model's
            transform converts it the way the model's reference does.

    Returns:
        An "RGB" image (or the decoded mode with `keep_mode`), not tied to the open file.

    Raises:
        ImageLoadError: The file does not exist, is not a readable image, or its data is
            truncated or corrupt. The message is one line and names the file.
    """
    return _decode(os.fspath(path), os.fspath(path), keep_mode)


def load_image_bytes(data: bytes, name: str = "upload", keep_mode: bool = False) -> Image.Image:
    """Decodes an image held in memory (an upload) exactly as `load_image` decodes a file.

    Args:
        data: The encoded image (JPEG, PNG, ...).
        name: What to call it in error messages, e.g. the uploaded file's name.
        keep_mode: Return the decoded mode, as `load_image(..., keep_mode=True)`.

    Raises:
        ImageLoadError: Empty, not an image, truncated or corrupt; the message names `name`.
    """
    if not data:
        raise ImageLoadError(f"cannot load image {name}: the data is empty")
    return _decode(io.BytesIO(data), name, keep_mode)


def _decode(source: str | io.BytesIO, name: str, keep_mode: bool = False) -> Image.Image:
    try:
        with Image.open(source) as opened:
            opened.load()
            # exif_transpose returns a new image (a copy when there is nothing to rotate), so
            # the result no longer refers to the file being closed here.
            image = ImageOps.exif_transpose(opened)
        return image if keep_mode else to_rgb(image)
    except FileNotFoundError:
        raise ImageLoadError(f"cannot load image {name}: no such file") from None
    except IsADirectoryError:
        raise ImageLoadError(f"cannot load image {name}: it is a directory") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"cannot load image {name}: not a recognised image file") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"cannot load image {name}: {_one_line(error)}") from error
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        # PIL reports truncated data as OSError("image file is truncated ..."), and corrupt
        # headers/chunks as SyntaxError, ValueError or struct.error depending on the plugin.
        raise ImageLoadError(
            f"cannot load image {name}: truncated or corrupt image data ({_one_line(error)})"
        ) from error


def load_images(paths: Iterable[str | os.PathLike[str]]) -> list[Image.Image]:
    """Loads several image files with `load_image`.

    Args:
        paths: Image files, in order.

    Returns:
        One RGB image per path, in the same order.

    Raises:
        ImageLoadError: For the first file that cannot be loaded.
    """
    return [load_image(path) for path in paths]
