"""Content-addressed code snapshots (tar.gz), checked before anything touches the disk.

Refused: absolute paths, ``..`` components, links of any kind, device files and FIFOs,
more than ``max_members`` members, member sizes summing past ``max_unpacked`` and any
archive whose decompressed stream (headers included) grows past that cap.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ArchiveError(ValueError):
    """A refused upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ArchiveInfo:
    sha256: str
    size: int
    unpacked_size: int
    n_files: int


class _Capped(io.RawIOBase):
    """A read-only stream that fails once more than ``cap`` bytes have come out of ``inner``."""

    def __init__(self, inner: io.BufferedIOBase, cap: int) -> None:
        self.inner, self.cap, self.seen = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buf))
        self.seen += len(data)
        if self.seen > self.cap:
            raise ArchiveError(f"archive unpacks to more than {self.cap} bytes (limit)", 413)
        buf[: len(data)] = data
        return len(data)


def check_archive(data: bytes, max_bytes: int, max_unpacked: int, max_members: int) -> ArchiveInfo:
    """Validate a tar.gz upload in memory; raises ArchiveError with a clear message."""
    if len(data) > max_bytes:
        raise ArchiveError(f"archive is {len(data)} bytes; the limit is {max_bytes} bytes compressed", 413)
    if not data.startswith(b"\x1f\x8b"):
        raise ArchiveError("not a gzip file: upload a .tar.gz snapshot")
    # headers count too: pad the cap so a tree of small files at the limit still passes
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data)), max_unpacked + 1024 * max_members + 10240)
    total = files = members = 0
    try:
        with tarfile.open(fileobj=io.BufferedReader(stream), mode="r|") as tar:
            for m in tar:
                members += 1
                if members > max_members:
                    raise ArchiveError(f"archive has more than {max_members} members (limit)", 413)
                path = PurePosixPath(m.name)
                if m.name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", m.name):
                    raise ArchiveError(f"absolute path in archive: {m.name!r}")
                if ".." in path.parts or "\\" in m.name:
                    raise ArchiveError(f"path leaving the archive root: {m.name!r}")
                if m.issym() or m.islnk():
                    raise ArchiveError(f"links are not allowed in snapshots: {m.name!r} -> {m.linkname!r}")
                if not (m.isfile() or m.isdir()):
                    raise ArchiveError(f"only regular files and folders are allowed: {m.name!r} is a special file")
                total += m.size
                files += m.isfile()
                if total > max_unpacked:
                    raise ArchiveError(f"archive unpacks to more than {max_unpacked} bytes (limit)", 413)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(f"not a valid tar.gz archive: {e}") from None
    if members == 0:
        raise ArchiveError("empty archive: no files")
    return ArchiveInfo(hashlib.sha256(data).hexdigest(), len(data), total, files)


class CodeStore:
    """Snapshots on disk under ``root/ab/<sha256>.tar.gz``; writes are atomic."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        if not SHA_RE.match(sha):
            raise ValueError(f"not a sha256: {sha!r}")
        return self.root / sha[:2] / f"{sha}.tar.gz"

    def put(self, sha: str, data: bytes) -> Path:
        path = self.path(sha)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{sha}.{os.getpid()}.{id(data)}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        return path
