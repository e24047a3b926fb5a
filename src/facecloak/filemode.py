"""File permissions of what facecloak writes: the same as any program the user runs (their umask decides).

Atomic writes go through ``tempfile.mkstemp``, which creates files readable by the owner only (0600); left like that,
JSON records would be private while PNGs were not, and a shared output folder would be half unreadable.
"""

from __future__ import annotations

import os

REGULAR_FILE_MODE = 0o666  # what open() asks for; the umask then removes bits


def user_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return REGULAR_FILE_MODE & ~mask
