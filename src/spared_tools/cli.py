"""Placeholder for the command-line interface (being implemented)."""

from __future__ import annotations


def main(argv=None) -> int:
    """Not implemented yet."""
    raise NotImplementedError("cli")
