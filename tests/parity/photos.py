"""Real photos (scikit-image's bundled data) in every PIL mode the reference suites exercise.

The issue-19 parity modules run each reference's cases on these: the modes `RGB`, `L`, `LA`,
`P`, `P` with a transparent palette entry, `1`, `I;16`, `I`, `F`, `CMYK`, `RGBA` with partial
alpha, and odd sizes (1x1000, 17x33, 5000x40, 1x1).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data as skimage_data

MODES = ("RGB", "L", "LA", "P", "P+transparency", "1", "I;16", "I", "F", "CMYK", "RGBA")
ODD_SIZES = ((1, 1000), (17, 33), (5000, 40), (1, 1))  # (width, height)


def astronaut() -> Image.Image:
    """scikit-image's astronaut (512x512 RGB), cut to a non-square 300x220 crop."""
    return Image.fromarray(skimage_data.astronaut()[40:260, 100:400])


def coffee() -> Image.Image:
    """scikit-image's coffee (600x400 RGB)."""
    return Image.fromarray(skimage_data.coffee())


def in_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` converted to `mode`, with the content each mode really carries.

    16-bit and float modes get values beyond 8 bits (so clipping vs rescaling shows); RGBA gets
    a partial alpha gradient; `P+transparency` marks one palette entry transparent.
    """
    rgb = image.convert("RGB")
    if mode == "RGBA":
        rgba = rgb.convert("RGBA")
        alpha = np.linspace(0, 255, rgb.width, dtype=np.float64)[None, :].repeat(rgb.height, 0)
        rgba.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        return rgba
    if mode == "LA":
        la = rgb.convert("LA")
        la.putalpha(Image.fromarray(np.full((rgb.height, rgb.width), 128, np.uint8)))
        return la
    if mode == "P+transparency":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        p.info["transparency"] = 0
        return p
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "I;16":
        grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        return Image.fromarray(grey)  # uint16 -> mode "I;16"
    if mode == "I":
        grey = np.asarray(rgb.convert("L"), dtype=np.int32) * 3 - 100  # beyond [0, 255]
        return Image.fromarray(grey)  # int32 -> mode "I"
    if mode == "F":
        grey = np.asarray(rgb.convert("L"), dtype=np.float32) / 255.0 * 300.0 - 20.0
        return Image.fromarray(grey)  # float32 -> mode "F"
    return rgb.convert(mode)


def odd_size(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A real-photo crop resized to an odd size (thin strips, primes, a single pixel)."""
    return in_mode(coffee().resize((width, height), Image.Resampling.BILINEAR), mode)
