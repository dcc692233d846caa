"""Files in the local state dir that nobody else may read (reports, admin.conf, generated
passwords): written 0600 from their creation, atomically, in 0700 directories.

Never write-then-chmod: between the two a file would sit with the umask's mode.
"""

from __future__ import annotations

import os
from pathlib import Path

from nornir_k8sha.constants import SECRET_FILE_MODE

#: Directories made on the way to a private file.
PRIVATE_DIR_MODE = 0o700


def write_private(path: Path, data: str | bytes, *, exclusive: bool = False) -> bool:
    """Write `data` to `path` with mode 0600 from the first byte. `exclusive`: only when `path`
    does not exist yet (returns False, leaving it alone, when it does). Returns True when
    written."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, SECRET_FILE_MODE)
    try:
        os.fchmod(fd, SECRET_FILE_MODE)  # a stale temp file keeps its old mode otherwise
        os.write(fd, raw)
    finally:
        os.close(fd)
    try:
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # fails when path exists: never overwrite
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
