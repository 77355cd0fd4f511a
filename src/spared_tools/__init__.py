"""spared_tools: SpaRED preprocessing, SpaCKLE completion and GeneQuery prediction on AnnData."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import datasets, io, pl, pp, tl
from ._settings import settings

try:
    __version__ = version("spared-tools")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "io", "pl", "pp", "settings", "tl", "__version__"]
