"""Readers for Space Ranger folders and legacy ST files."""

from __future__ import annotations

from ._visium import read_visium
from ._st import read_st, read_her2st
from ._concat import concat_slides

__all__ = ['concat_slides', 'read_her2st', 'read_st', 'read_visium']
