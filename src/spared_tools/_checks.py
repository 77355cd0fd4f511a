"""Argument checks that need no AnnData (usable from ``_kernels`` and ``models``). Each error names the argument."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, overload

import numpy as np

__all__ = ["ORGANISMS", "check_choice", "check_int", "check_number", "check_organism"]


_Bound = int | None


@overload
def check_int(
    value: object, name: str, *, min: _Bound = ..., max: _Bound = ..., allow_none: Literal[False] = ...
) -> int: ...
@overload
def check_int(
    value: object, name: str, *, min: _Bound = ..., max: _Bound = ..., allow_none: bool
) -> int | None: ...
def check_int(
    value: object,
    name: str,
    *,
    min: int | None = 1,
    max: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """``value`` as an ``int``, or a ``ValueError`` naming ``name``.

    Parameters
    ----------
    value
        The value to check. ``bool`` is refused (``True`` is not a count).
    name
        The argument's name, used in the message.
    min, max
        Inclusive bounds (``None``: unbounded). The default ``min=1`` asks for a positive integer.
    allow_none
        Return ``None`` for ``None`` instead of raising (the message then says "... or None").
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or (min is not None and value < min)
        or (max is not None and value > max)
    ):
        what = _int_phrase(min, max) + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {what}, got {value!r}.")
    return int(value)


def _int_phrase(lo: int | None, hi: int | None) -> str:
    if lo == 1 and hi is None:
        return "a positive integer"
    if lo == 0 and hi is None:
        return "a non-negative integer"
    if lo is not None and hi is not None:
        return f"an integer in [{lo}, {hi}]"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def check_number(
    value: object,
    name: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a finite ``float`` within the bounds, or a ``ValueError`` naming ``name``.

    Parameters
    ----------
    value
        The value to check (``bool`` is refused).
    name
        The argument's name, used in the message.
    min, max
        Bounds (``None``: unbounded).
    min_inclusive, max_inclusive
        Whether each bound is allowed.
    """
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = bool(np.isfinite(v))
        if ok and min is not None:
            ok = v >= min if min_inclusive else v > min
        if ok and max is not None:
            ok = v <= max if max_inclusive else v < max
    if not ok:
        lo = "" if min is None else ("[" if min_inclusive else "(") + f"{min}, "
        hi = "" if max is None else f"{max}" + ("]" if max_inclusive else ")")
        rng = f" in {lo or '(-inf, '}{hi or 'inf)'}" if (min is not None or max is not None) else ""
        raise ValueError(f"{name} must be a finite number{rng}, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them.

    Parameters
    ----------
    value
        The value to check.
    name
        The argument's name, used in the message.
    choices
        The allowed values.
    """
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}.")
    return value


#: Accepted spellings of the two organisms the package bundles data for, mapped to the canonical name.
ORGANISMS: dict[str, str] = {
    alias: name
    for name, aliases in (
        ("human", ("human", "homo sapiens", "hsapiens", "hs")),
        ("mouse", ("mouse", "mus musculus", "mmusculus", "mm")),
    )
    for alias in aliases
}


def check_organism(value: object, name: str = "organism") -> str:
    """``"human"`` or ``"mouse"`` for ``value`` (case and an alias such as ``"Homo sapiens"`` allowed), else a ``ValueError``.

    Parameters
    ----------
    value
        The organism as the user wrote it.
    name
        The argument's name, used in the message.
    """
    key = value.strip().lower() if isinstance(value, str) else ""
    if key not in ORGANISMS:
        raise ValueError(
            f"Unknown {name} {value!r}; {name} must be 'human' or 'mouse' "
            f"(also accepted: {', '.join(repr(k) for k in ORGANISMS if k not in ('human', 'mouse'))})."
        )
    return ORGANISMS[key]
