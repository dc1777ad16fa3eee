"""Paths given by the user to write to: checked once, for every function that writes a file."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_path"]


def file_path(path, name: str) -> Path:
    """``path`` as a Path to write, or an error naming the argument: not a path (``out=123``), or
    under a "folder" that is a file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a file path (str or os.PathLike); got {type(path).__name__} {path!r}.")
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"`{name}` {str(path)!r} cannot be written: {str(parent)!r} is a file, "
                                         "not a folder.")
            break
    return path
