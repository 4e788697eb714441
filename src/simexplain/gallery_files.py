"""Reading a gallery file at the moment it is used (a hit shown, copied into a results page,
explained, served by the web app), never trusting what was true when the index was built:

* it must still be a regular file inside the gallery folder: its path is resolved now and must
  lie inside the gallery's resolved root (a symbolic link swapped in that points elsewhere is
  refused), and the resolved path is opened without following a link (`O_NOFOLLOW`) and
  checked to be a regular file on the open descriptor (not a FIFO or a device);
* its bytes are read once from that descriptor and compared with the sha256 the index recorded:
  a file whose content changed is still usable but reported as stale; a missing one is stale
  and unusable; one larger than any image the decoders accept is refused without being read.
  Callers decode the bytes read here, so what is checked is what is used.

One function, `read_gallery_file`, used by every gallery read (retrieval and the web app).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .defaults import MAX_PIXELS

# A file larger than any image the decoders accept (MAX_PIXELS pixels of 4 float64 samples, plus
# room for metadata) is refused unread: a huge file swapped into the gallery is never read whole.
MAX_GALLERY_FILE_BYTES = MAX_PIXELS * 4 * 8 + (64 << 20)

# What became of a gallery file since it was indexed (GalleryFile.status)
OK, CHANGED, MISSING, REFUSED = "ok", "changed", "missing", "refused"
# Flags of the one open: no link followed at the last step, no blocking on a FIFO
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class GalleryFile:
    """A gallery file as read now: its bytes (None when missing or refused), and its status:
    "ok", "changed" (the bytes differ from the indexed sha256), "missing" or "refused" (not a
    regular file inside the gallery), with the reason in words."""

    path: str
    data: bytes | None
    status: str
    reason: str = ""

    @property
    def stale(self) -> str | None:
        """None for a file as indexed; else what happened to it, in words (for hits, JSON and
        warnings): 'changed since it was indexed', 'missing', 'refused: ...'."""
        return None if self.status == OK else self.reason


def read_gallery_file(path: str | Path, root: str | Path | None, sha256: str = "",
                      max_bytes: int = MAX_GALLERY_FILE_BYTES) -> GalleryFile:
    """Read a gallery file now: refused unless it is a regular file whose resolved path lies
    inside `root`'s resolved path (None: no folder to stay in, only the other checks) and of
    at most `max_bytes`; "changed" when `sha256` is given and differs from the bytes read."""
    name = str(path)
    try:
        real = os.path.realpath(name)
        if root is not None:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, real]) != real_root:
                return GalleryFile(name, None, REFUSED,
                                   f"refused: it now leads outside the gallery folder "
                                   f"{root} (a symbolic link?)")
        fd = os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        return GalleryFile(name, None, MISSING, "missing (moved or deleted since indexing)")
    except OSError as exc:  # ELOOP: a link swapped in at the last moment; EACCES ...
        return GalleryFile(name, None, REFUSED, f"refused: cannot open it safely "
                                                f"({exc.strerror or exc})")
    except ValueError as exc:  # a NUL byte in the name
        return GalleryFile(name, None, REFUSED, f"refused: {exc}")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return GalleryFile(name, None, REFUSED, "refused: not a regular file")
        try:
            # at most one byte more than allowed: a file that grows after fstat is caught too
            data = handle.read(max_bytes + 1) if info.st_size <= max_bytes else b""
        except OSError as exc:
            return GalleryFile(name, None, REFUSED, f"refused: cannot read it "
                                                    f"({exc.strerror or exc})")
    if info.st_size > max_bytes or len(data) > max_bytes:
        return GalleryFile(name, None, REFUSED,
                           f"refused: {max(info.st_size, len(data)):,} bytes, more than any "
                           f"image it could hold ({max_bytes:,})")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return GalleryFile(name, data, CHANGED, "changed since it was indexed")
    return GalleryFile(name, data, OK)
