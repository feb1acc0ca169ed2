"""Durable storage of received instances: temp file, fsync, rename, fsync directory.

Paths are built from UIDs cleaned of anything but digits and dots, so nothing from the
network can escape the spool.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

_UID_SAFE = re.compile(r"[^0-9.]")


class SpoolError(OSError):
    """The spool could not store a file."""


def clean_uid(uid: str) -> str:
    """A UID reduced to digits and dots (max 64 chars); never empty, never '.' or '..'."""
    cleaned = _UID_SAFE.sub("", uid)[:64].strip(".")
    return cleaned or "unknown"


class Spool:
    """The instance store on disk: ``<root>/<study>/<series>/<sop>.dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / ".incoming"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root / clean_uid(study_uid) / clean_uid(series_uid) / f"{clean_uid(sop_uid)}.dcm"
        )

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def commit(self, received: Path, final: Path) -> None:
        """Make ``received`` durable and atomically move it to ``final``."""
        final.parent.mkdir(parents=True, exist_ok=True)
        _fsync_file(received)
        try:
            os.replace(received, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_across_devices(received, final)
        _fsync_dir(final.parent)

    def _copy_across_devices(self, received: Path, final: Path) -> None:
        tmp = final.with_suffix(".part")
        shutil.copyfile(received, tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)
        received.unlink(missing_ok=True)

    def iter_files(self) -> list[Path]:
        return [p for p in self.root.glob("*/*/*.dcm") if p.is_file()]

    def discard(self, paths: list[Path]) -> int:
        """Delete spool files (retention) and their series folders once empty; returns count.

        Only files under the spool root are touched; a missing file is not an error. The
        study folder is left in place (another series of the study may be arriving).
        """
        removed = 0
        folders: set[Path] = set()
        for path in paths:
            if not path.is_relative_to(self.root) or path.parent == self.root:
                logger.warning("not deleting %s: outside the spool's series folders", path)
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            folders.add(path.parent)
        for folder in folders:
            _remove_if_empty(folder)
        return removed

    def purge_incoming(self) -> int:
        """Remove partial files left by an interrupted receive. Returns count."""
        count = 0
        for partial in self.tmp_dir.iterdir():
            partial.unlink(missing_ok=True)
            count += 1
        for part in self.root.glob("*/*/*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            logger.warning("could not remove spool folder %s: %s", folder, exc.strerror)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
