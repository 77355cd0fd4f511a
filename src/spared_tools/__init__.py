"""spared_tools: SpaRED preprocessing, SpaCKLE completion and GeneQuery prediction on AnnData."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

# first: importing _settings sets the OpenMP wait policy before anything loads torch
from ._settings import settings

# isort: split
from . import datasets, io, pl, pp, tl

try:
    __version__ = _version("spared-tools")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["datasets", "io", "pl", "pp", "settings", "tl", "__version__"]
