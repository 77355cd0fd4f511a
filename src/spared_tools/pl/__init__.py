"""Plotting."""

from __future__ import annotations

from ._spatial import spatial
from ._moran import moran
from ._filtering import filtering
from ._completion import completion
from ._prediction import prediction
from ._history import training_history

__all__ = ['completion', 'filtering', 'moran', 'prediction', 'spatial', 'training_history']
