"""The one masking rule of the package: hide a random fraction of the observed entries.

SpaCKLE trains on it (per neighbourhood, a fraction or a ``(low, high)`` range drawn per neighbourhood),
validates on it (one fixed mask of the validation spots) and :func:`spared_tools.tl.evaluate_completion`
scores on it (``n_masks`` masks per fraction). Every draw hides entry ``(i, j)`` when a uniform number
``u[i, j] < p`` and the entry was observed, so the three uses differ only in where ``u`` comes from
(a NumPy generator on arrays, a torch generator on tensors) and one validator checks every fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_mask_fraction", "check_mask_fractions", "hide_entries", "hide_entries_torch"]


def check_mask_fraction(value: float | Sequence[float], name: str = "mask_frac") -> tuple[float, float]:
    """A fraction in (0, 1), or a ``(low, high)`` range with ``0 < low <= high < 1``, as ``(low, high)``.

    Parameters
    ----------
    value
        The fraction or range.
    name
        Argument name for the error message.

    Returns
    -------
    ``(low, high)`` (equal for a single fraction).
    """
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ValueError(f"{name} must be a float or a (low, high) pair, got {value!r}.")
        low, high = (float(v) for v in value)
    else:
        low = high = float(value)  # type: ignore[arg-type]
    if not (0.0 < low <= high < 1.0):
        raise ValueError(f"{name} must lie in (0, 1) with low <= high, got {value!r}.")
    return low, high


def check_mask_fractions(value: float | Sequence[float], name: str = "mask_frac") -> list[float]:
    """One or several fractions in (0, 1) (the evaluation's list of masking levels)."""
    fracs: list = [value] if np.isscalar(value) else list(value)  # type: ignore[arg-type]
    if not fracs:
        raise ValueError(f"{name} is empty.")
    out = []
    for f in fracs:
        f = float(f)
        if not 0.0 < f < 1.0:
            raise ValueError(f"mask fractions must lie in (0, 1), got {f!r}.")
        out.append(f)
    return out


def hide_entries(observed: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Bool mask hiding each observed entry with probability ``fraction`` (``rng.random(shape) < p``).

    Parameters
    ----------
    observed
        Bool ``(n, g)``: the entries that may be hidden.
    fraction
        Probability of hiding each observed entry.
    rng
        Generator of the uniform draws (one per entry, observed or not, in C order).

    Returns
    -------
    Bool array of ``observed``'s shape, a subset of ``observed``.
    """
    observed = np.asarray(observed, dtype=bool)
    return (rng.random(observed.shape) < float(fraction)) & observed


def hide_entries_torch(observed: Any, low: float, high: float, generator: Any) -> Any:
    """The same rule on a ``(b, t, g)`` torch tensor: one fraction per item, drawn in ``[low, high]``.

    The uniform numbers ``u`` are drawn first, then (when ``high > low``) one fraction per item; with
    ``low == high`` the fraction is fixed.

    Parameters
    ----------
    observed
        Bool tensor ``(b, t, g)``.
    low, high
        Range of the per-item fraction.
    generator
        ``torch.Generator`` on ``observed``'s device.

    Returns
    -------
    Bool tensor of ``observed``'s shape, a subset of ``observed``.
    """
    import torch

    u = torch.rand(observed.shape, generator=generator, device=observed.device)
    if high > low:
        p = low + (high - low) * torch.rand(
            (observed.shape[0], 1, 1), generator=generator, device=observed.device
        )
    else:
        p = torch.full((1, 1, 1), low, device=observed.device)
    return (u < p) & observed
