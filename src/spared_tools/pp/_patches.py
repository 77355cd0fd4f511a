"""Placeholder for extract_patches, PatchDataset (being implemented)."""

from __future__ import annotations


def extract_patches(*args, **kwargs):
    """Not implemented yet."""
    raise NotImplementedError("extract_patches")


class PatchDataset:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("PatchDataset")
