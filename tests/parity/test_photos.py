"""The shared photo fixtures carry what their modes promise (the parity modules rely on it)."""

import numpy as np
import pytest

from .photos import MODES, astronaut, in_mode, odd_size


@pytest.mark.parametrize("mode", MODES)
def test_modes_hold_their_content(mode):
    image = in_mode(astronaut(), mode)
    assert image.mode == mode.split("+")[0]
    if mode in ("I;16", "I", "F"):
        assert np.asarray(image).max() > 255  # beyond 8 bits, so clipping vs rescaling shows
    if mode == "RGBA":
        alpha = np.asarray(image)[..., 3]
        assert alpha.min() == 0 and alpha.max() == 255
    if mode == "P+transparency":
        assert image.info["transparency"] == 0


def test_odd_sizes():
    assert odd_size(17, 33, "L").size == (17, 33)
