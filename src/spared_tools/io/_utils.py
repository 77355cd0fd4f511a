"""Private helpers shared by the readers (file checks, count validation)."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Errors that mean "the bytes of this file are not what its name promises" (truncated, corrupt, other format).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    pd.errors.ParserError,
)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    low = text.lower()
    if isinstance(exc, EOFError) or "truncated" in low or "eof" in low or "end of file" in low:
        return "the file is truncated (it ends before its data do); copy or download it again"
    if "file signature not found" in low:
        return "it is not an HDF5 file (no HDF5 signature)"
    if isinstance(exc, gzip.BadGzipFile) or "not a gzipped file" in low:
        return "it is not a valid gzip file"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text (a binary or differently encoded file?)"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON ({text})"
    if "cannot identify image file" in low:
        return "it is not an image format Pillow can read"
    return f"it is corrupt or not in the expected format ({type(exc).__name__}: {text})"


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn low-level read errors (h5py, gzip, zlib, Pillow, pandas) into a ``ValueError`` naming the file.

    Missing files and permission errors pass through unchanged; so do the readers' own, already named
    errors.

    Parameters
    ----------
    path
        The file being read.
    what
        What the file is, for the message (e.g. ``"Count matrix"``).
    """
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except _READ_ERRORS as exc:
        raise ValueError(f"{what} {path} could not be read: {_describe(exc)}.") from exc


def read_h5ad(path: str | Path, *, what: str = "AnnData file") -> object:
    """:func:`anndata.read_h5ad` with a ``ValueError`` naming the file when it is truncated or corrupt.

    Parameters
    ----------
    path
        ``.h5ad`` file.
    what
        What the file is, for the message.

    Returns
    -------
    The :class:`~anndata.AnnData` read.
    """
    import anndata as ad

    path = require_file(path, what)
    with reading(path, what):
        try:
            return ad.read_h5ad(path)
        except (KeyError, TypeError, AttributeError) as exc:  # h5py/anndata on a damaged group tree
            raise ValueError(
                f"{what} {path} could not be read: it is corrupt or not an AnnData file "
                f"({type(exc).__name__}: {exc})."
            ) from exc


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising ``FileNotFoundError`` naming ``what`` when absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def open_text(path: Path) -> IO[str]:
    """Open a plain, gzip, bzip2 or xz text file (detected from its first bytes) for reading."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    if head == b"BZ":
        return bz2.open(path, "rt", encoding="utf-8", newline="")
    if head == b"\xfd7":
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_header(path: Path, sep: str) -> list[str]:
    """Return the fields of the first line of a delimited (possibly compressed) text file."""
    with reading(path, "File"), open_text(path) as fh:
        line = fh.readline()
    if not line:
        raise ValueError(f"{path} is empty.")
    return [field.strip().strip('"') for field in line.rstrip("\r\n").split(sep)]


def check_counts(values: np.ndarray | sp.spmatrix, *, where: str) -> None:
    """Raise ``ValueError`` for NaN/inf, negative or non-integer counts (``where`` names the source)."""
    data = np.asarray(values.data if sp.issparse(values) else values)
    if data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_:
        raise TypeError(f"Counts in {where} must be numeric, got dtype {data.dtype}.")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise ValueError(f"Counts in {where} contain {int(bad.sum())} NaN, empty or infinite values.")
        frac = data != np.round(data)
        if frac.any():
            raise ValueError(
                f"Counts in {where} contain {int(frac.sum())} non-integer values (e.g. {data[frac][0]!r}); "
                "the readers expect raw integer counts."
            )
    neg = data < 0
    if neg.any():
        raise ValueError(f"Counts in {where} contain {int(neg.sum())} negative values; counts must be >= 0.")


def to_count_matrix(values: np.ndarray | sp.spmatrix, dtype: str | np.dtype, *, where: str) -> sp.csr_matrix:
    """Validate raw counts and return them as a CSR matrix of ``dtype`` (``float32``/``float64``/``int32``/``int64``)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64)):
        raise ValueError(f"dtype must be float32, float64, int32 or int64, got {dtype}.")
    check_counts(values, where=where)
    mat = sp.csr_matrix(values)
    if mat.nnz:
        top = float(mat.data.max())
        limit = {np.dtype(np.float32): 2**24, np.dtype(np.int32): 2**31 - 1}.get(dtype, 2**53)
        if top > limit:
            raise ValueError(
                f"Counts in {where} reach {top:.0f}, which {dtype} cannot hold exactly; pass dtype='int64'."
            )
    mat = mat.astype(dtype)
    mat.eliminate_zeros()
    mat.sort_indices()
    return mat
