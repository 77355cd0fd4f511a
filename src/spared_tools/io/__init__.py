"""Readers for Space Ranger folders and legacy ST files, slide concatenation, and SpatialData in and out."""

from ._concat import concat_slides
from ._spatialdata import from_spatialdata, to_spatialdata
from ._st import read_her2st, read_st
from ._visium import read_visium

__all__ = ["concat_slides", "from_spatialdata", "read_her2st", "read_st", "read_visium", "to_spatialdata"]
