"""Plotting."""

from ._completion import completion
from ._filtering import filtering
from ._history import training_history
from ._moran import moran
from ._prediction import prediction
from ._spatial import spatial

__all__ = ["completion", "filtering", "moran", "prediction", "spatial", "training_history"]
