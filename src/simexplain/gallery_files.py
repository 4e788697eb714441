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
A caller that wants only the status (a search marking its stale hits) passes data=False: a file
whose sha256 was verified before, and whose identity and stat (device, inode, size,
modification and change times) are the same now, is then not read again. Only files last
changed more than RACY_SECONDS before their verification are remembered, since a write within
the same clock tick as the verification could leave the times as they were (as git's index
does); the change time cannot be set back by a user, so a file rewritten and given its old
modification time is read again.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .defaults import MAX_PIXELS

# A file larger than any image the decoders accept (MAX_PIXELS pixels of 4 float64 samples, plus
# room for metadata) is refused unread: a huge file swapped into the gallery is never read whole.
MAX_GALLERY_FILE_BYTES = MAX_PIXELS * 4 * 8 + (64 << 20)

# Verified sha256s remembered (about 150 B each), and how long ago a file must have last
# changed when it is verified to be remembered
VERIFIED_ENTRIES = 1 << 16
RACY_SECONDS = 2.0

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
                      max_bytes: int = MAX_GALLERY_FILE_BYTES, data: bool = True
                      ) -> GalleryFile:
    """Read a gallery file now: refused unless it is a regular file whose resolved path lies
    inside `root`'s resolved path (None: no folder to stay in, only the other checks) and of
    at most `max_bytes`; "changed" when `sha256` is given and differs from the bytes read.
    data=False: only the status is wanted; a file verified before and unchanged since (see
    the module's docstring) is then not read, and its `data` is None."""
    name = str(path)
    opened = _open_inside(name, root)
    if isinstance(opened, GalleryFile):
        return opened
    with os.fdopen(opened, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return GalleryFile(name, None, REFUSED, "refused: not a regular file")
        if not data and sha256 and _VERIFIED.holds(info, sha256):
            return GalleryFile(name, None, OK)
        try:
            # at most one byte more than allowed: a file that grows after fstat is caught too
            content = handle.read(max_bytes + 1) if info.st_size <= max_bytes else b""
            after = os.fstat(handle.fileno())
        except OSError as exc:
            return GalleryFile(name, None, REFUSED, f"refused: cannot read it "
                                                    f"({exc.strerror or exc})")
    if info.st_size > max_bytes or len(content) > max_bytes:
        return GalleryFile(name, None, REFUSED,
                           f"refused: {max(info.st_size, len(content)):,} bytes, more than "
                           f"any image it could hold ({max_bytes:,})")
    if not sha256:
        return GalleryFile(name, content, OK)
    steady = _VERIFIED.key(info) == _VERIFIED.key(after)  # nothing wrote while it was read
    if not (steady and _VERIFIED.holds(after, sha256)):
        if hashlib.sha256(content).hexdigest() != sha256:
            return GalleryFile(name, content, CHANGED, "changed since it was indexed")
        if steady:
            _VERIFIED.remember(after, sha256)
    return GalleryFile(name, content, OK)


def _open_inside(name: str, root: str | Path | None) -> int | GalleryFile:
    """A descriptor of the file, opened without following a link at the last step, whose
    resolved path lies inside `root`; or the GalleryFile saying why not."""
    try:
        real = os.path.realpath(name)
        if root is not None:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, real]) != real_root:
                return GalleryFile(name, None, REFUSED,
                                   f"refused: it now leads outside the gallery folder "
                                   f"{root} (a symbolic link?)")
        return os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        return GalleryFile(name, None, MISSING, "missing (moved or deleted since indexing)")
    except OSError as exc:  # ELOOP: a link swapped in at the last moment; EACCES ...
        return GalleryFile(name, None, REFUSED, f"refused: cannot open it safely "
                                                f"({exc.strerror or exc})")
    except ValueError as exc:  # a NUL byte in the name
        return GalleryFile(name, None, REFUSED, f"refused: {exc}")


class _VerifiedHashes:
    """sha256s verified before, by file identity (device, inode) and stat, the oldest dropped
    past VERIFIED_ENTRIES; shared by the threads of the web app."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[int, int], tuple[tuple[int, int, int], str]] = \
            OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(info: os.stat_result) -> tuple[int, int, int]:
        return info.st_size, info.st_mtime_ns, info.st_ctime_ns

    def holds(self, info: os.stat_result, sha256: str) -> bool:
        with self._lock:
            entry = self._entries.get((info.st_dev, info.st_ino))
        return entry == (self.key(info), sha256)

    def remember(self, info: os.stat_result, sha256: str) -> None:
        changed = max(info.st_mtime_ns, info.st_ctime_ns)
        if time.time_ns() - changed < RACY_SECONDS * 1e9:
            return  # changed too recently: a write in the same clock tick would not show
        with self._lock:
            self._entries[(info.st_dev, info.st_ino)] = (self.key(info), sha256)
            self._entries.move_to_end((info.st_dev, info.st_ino))
            while len(self._entries) > VERIFIED_ENTRIES:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_VERIFIED = _VerifiedHashes()
