"""Decoding uploaded images within a pixel budget, checked before the pixels are decoded.

`Image.open` reads only the header, so the size an image claims is known before `load()`
allocates it. An upload over `max_pixels`:

- JPEG: decoded at 1/2, 1/4 or 1/8 scale (`Image.draft`, the DCT-domain scaling of libjpeg:
  the full-size image is never allocated), the smallest reduction that fits the budget;
- JPEG 2000: decoded at a reduced resolution level (`Jpeg2KImageFile.reduce`, set before load);
- any other format (PNG, WebP, GIF, TIFF, ...) has no reduced decode: refused with `TooLarge`.

The budget replaces PIL's own bomb check for uploads. `Image.open` raises
`DecompressionBombError` for a header over 2 x `Image.MAX_IMAGE_PIXELS` (179 megapixels) before
a caller can ask for a reduced decode, so a 16000 x 16000 JPEG (4 megapixels at 1/8 scale) would
be refused with PIL's message and a 30000 x 30000 PNG would not get this server's. `_open_header`
then opens the header again the way `Image.open` does (`Image.ID` / `Image.OPEN`, the first
format whose `accept` takes the prefix) without that one check, and `decode_upload` applies the
budget before any pixel is decoded. `Image.MAX_IMAGE_PIXELS` is never changed: every other
`Image.open` in the process keeps PIL's check. A budget set above PIL's limit
(`--max-megapixels` over 179) is honoured for JPEG and PNG; formats whose plugins check sizes
themselves while decoding (GIF frames, TIFF tiles, WebP) still stop at PIL's limit, answered
with the same 413 line.

Accepted images are decoded like `vlkit.data.images.load_image_bytes` (EXIF orientation, then
`to_rgb`, or the decoded mode with `keep_mode` so a CLIP transform converts it the way the
checkpoint's reference does, as the CLI's `zeroshot` / `search` do), so an image within the
budget gives the same pixels as the CLI; a JPEG shrunk by
`draft` differs from the CLI's (which decodes it in full) by the resampling, documented in the
README's serve section.
"""

from __future__ import annotations

import io
import math
import struct

from PIL import Image, ImageOps, UnidentifiedImageError

from vlkit.data.images import ImageLoadError, to_rgb

__all__ = ["TooLarge", "decode_upload"]


class TooLarge(ImageLoadError):
    """The image has more pixels than the server decodes (answered 413)."""


def _reduction(width: int, height: int, max_pixels: int, choices: tuple[int, ...]) -> int | None:
    """The smallest factor in `choices` that brings width x height within `max_pixels`."""
    for factor in choices:
        if math.ceil(width / factor) * math.ceil(height / factor) <= max_pixels:
            return factor
    return None


def _shrink_before_decoding(image: Image.Image, max_pixels: int) -> None:
    """Asks the decoder for a reduced size where the format has one (see the module doc)."""
    width, height = image.size
    if image.format == "JPEG":
        factor = _reduction(width, height, max_pixels, (2, 4, 8))
        if factor is not None:
            # draft picks the largest scale s in {8, 4, 2} with size // requested >= s.
            image.draft(image.mode, (width // factor, height // factor))
    elif image.format == "JPEG2000":
        level = _reduction(width, height, max_pixels, tuple(2**k for k in range(1, 6)))
        if level is not None:
            image.reduce = int(math.log2(level))  # type: ignore[assignment,method-assign]


def _open_header(data: bytes) -> Image.Image:
    """`Image.open(io.BytesIO(data))`, reading only the header, without PIL's bomb check on its
    size (see the module doc: `decode_upload` checks the size against its own budget)."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pass  # the header is over PIL's limit: open it again, as Image.open's _open_core does
    Image.init()
    buffer, prefix = io.BytesIO(data), data[:16]
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str is a warning, not a match
            continue
        try:
            buffer.seek(0)
            return factory(buffer, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format: Image.open tries the next one too
    raise UnidentifiedImageError("cannot identify image file")


def _too_large(name: str, width: int, height: int, max_pixels: int) -> TooLarge:
    return TooLarge(
        f"image {name} is {width}x{height} = {width * height / 1e6:.1f} megapixels: "
        f"this server decodes at most {max_pixels / 1e6:g} (--max-megapixels)"
    )


def decode_upload(data: bytes, name: str, max_pixels: int, keep_mode: bool = False) -> Image.Image:
    """An uploaded image as RGB (or its decoded mode), never decoding more than `max_pixels` pixels.

    Args:
        data: The encoded image.
        name: The uploaded file's name, for messages.
        max_pixels: The pixel budget (width x height of the decoded image).
        keep_mode: Return the decoded mode ("RGBA", "P", "I;16", ...) instead of RGB.

    Raises:
        TooLarge: The image is over the budget and its format cannot decode it smaller.
        ImageLoadError: Empty, not an image, truncated or corrupt; the message names `name`.
    """
    if not data:
        raise ImageLoadError(f"cannot load image {name}: the data is empty")
    width = height = 0
    try:
        with _open_header(data) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                _shrink_before_decoding(opened, max_pixels)
            if opened.size[0] * opened.size[1] > max_pixels:
                raise _too_large(name, width, height, max_pixels)
            opened.load()
            image = ImageOps.exif_transpose(opened)
        return image if keep_mode else to_rgb(image)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        # A plugin's own check while decoding (GIF frames, TIFF tiles, WebP), above our default
        # budget; the same one line, with the header's size where it was read.
        if width and height:
            raise _too_large(name, width, height, max_pixels) from None
        raise TooLarge(f"image {name}: {' '.join(str(error).split())}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"cannot load image {name}: not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        raise ImageLoadError(
            f"cannot load image {name}: truncated or corrupt image data ({message})"
        ) from None
