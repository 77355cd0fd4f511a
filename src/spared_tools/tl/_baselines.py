"""Placeholder for MeanPredictor, RidgePredictor, LinearHeadPredictor (being implemented)."""

from __future__ import annotations


class MeanPredictor:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("MeanPredictor")


class RidgePredictor:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("RidgePredictor")


class LinearHeadPredictor:
    """Not implemented yet."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("LinearHeadPredictor")
