"""Serving indexed images only from inside the indexed folders, checked when each is served.

An index stores paths; between indexing and serving a file may be replaced by a symlink to
anything the server can read (the issue's test served /etc/hostname as image/png). So each
request resolves the path again (`os.path.realpath`, every symlink followed) and serves the
resolved file only if it lies inside one of the roots and has an image suffix. The roots are
the index's `images_dir` (written by `vlkit index`), else the folders of the indexed files,
resolved once when the server starts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vlkit.data.images import IMAGE_SUFFIXES

__all__ = ["IndexedFiles", "Refused"]


class Refused(Exception):
    """The file is gone, not an image, or resolves outside the roots (message: one line)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class IndexedFiles:
    """The files of an index, served by row.

    Args:
        names: The index's row names (file paths).
        images_dir: The folder `vlkit index` embedded, or None to use the files' folders.
    """

    def __init__(self, names: Sequence[str], images_dir: str | None = None) -> None:
        self.names = list(names)
        folders = [images_dir] if images_dir else {str(Path(n).parent) for n in self.names}
        self.roots = sorted({Path(os.path.realpath(folder)) for folder in folders})

    def __len__(self) -> int:
        return len(self.names)

    def path(self, position: int) -> Path:
        """The resolved file of row `position`.

        Raises:
            Refused: 404 (no such row, file gone) or 403 (outside the roots, not an image).
        """
        if not 0 <= position < len(self.names):
            raise Refused(404, f"no image {position}: the index has {len(self.names)}")
        name = Path(self.names[position]).name
        real = Path(os.path.realpath(self.names[position]))
        if not any(real.is_relative_to(root) for root in self.roots):
            raise Refused(403, f"image {position} ({name}) resolves outside the indexed folder")
        if real.suffix.lower() not in IMAGE_SUFFIXES:
            raise Refused(403, f"image {position} ({name}) resolves to a file that is no image")
        if not real.is_file():
            raise Refused(404, f"image {position} ({name}): indexed, but the file is gone")
        return real
