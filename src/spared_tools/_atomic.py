"""Atomic writes: a crash never leaves a half-written file (or folder) where a good one was.

Write to a temporary sibling in the same directory, then ``os.replace`` it onto the target (atomic on POSIX
and Windows for files on one file system). Used by model ``save``, the CLI and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path"]


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} already exists; pass overwrite=True to replace it.")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success it is renamed onto ``path``.

    Parameters
    ----------
    path
        The file to write.
    overwrite
        Replace an existing file. With ``False`` an existing ``path`` raises ``FileExistsError`` before
        anything is written.

    Examples
    --------
    >>> with atomic_path("out.h5ad") as tmp:  # doctest: +SKIP
    ...     adata.write_h5ad(tmp)
    """
    target = Path(path)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not overwrite and target.exists():  # appeared while writing
            raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it.")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` (a folder).

    The old folder (if any, and ``overwrite=True``) is moved aside first and deleted only after the new
    one is in place, so at every instant either the old or the new complete folder sits at ``path``
    (a crash between the two renames leaves the old folder under a ``.old`` name next to it).

    Parameters
    ----------
    path
        The folder to write.
    overwrite
        Replace an existing folder; with ``False`` an existing ``path`` raises ``FileExistsError``.
    """
    target = Path(path)
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{str(target)!r} already exists; pass overwrite=True to replace it.")
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
