"""Assign train / val / test labels to spots from the values of an ``obs`` column."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from anndata import AnnData

from spared_tools._keys import Key
from spared_tools._logging import logger
from spared_tools._validation import check_adata, check_obs_key


def _as_list(values: Any) -> list:
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Sequence | set | pd.Index):
        return [values]
    return list(values)


def split_by(
    adata: AnnData,
    *,
    key: str,
    train: Sequence[Any] | Any | None,
    val: Sequence[Any] | Any = (),
    test: Sequence[Any] | Any = (),
    key_added: str = Key.SPLIT,
) -> None:
    """Label every spot ``"train"``, ``"val"`` or ``"test"`` by the value of ``adata.obs[key]``.

    Typical use: split by slide (``key="slide_id"``) for intra-patient numbers, or by patient
    (``key="patient"``) for honest inter-patient numbers, since serial sections of one patient are
    strongly correlated.

    Parameters
    ----------
    adata
        Annotated data.
    key
        ``adata.obs`` column whose values are assigned (e.g. ``"slide_id"`` or ``"patient"``).
    train
        Values of ``key`` forming the training set; ``None`` means every value not listed in ``val`` or
        ``test``.
    val
        Values forming the validation set.
    test
        Values forming the test set.
    key_added
        ``adata.obs`` column that receives the labels (categorical ``train``/``val``/``test``).

    Returns
    -------
    ``None``; writes ``adata.obs[key_added]`` and ``adata.uns[key_added]["params"]`` (key and the values of
    each set).
    """
    check_adata(adata)
    col = check_obs_key(adata, key)
    present = pd.unique(col.astype(str))
    lists = {Key.VAL: [str(v) for v in _as_list(val)], Key.TEST: [str(v) for v in _as_list(test)]}
    if train is None:
        listed = set(lists[Key.VAL]) | set(lists[Key.TEST])
        lists[Key.TRAIN] = [v for v in present if v not in listed]
    else:
        lists[Key.TRAIN] = [str(v) for v in _as_list(train)]
    seen: dict[str, str] = {}
    for name in (Key.TRAIN, Key.VAL, Key.TEST):
        for v in lists[name]:
            if v in seen and seen[v] != name:
                raise ValueError(f"{key}={v!r} is listed in both {seen[v]!r} and {name!r}.")
            seen[v] = name
    unknown = [v for v in seen if v not in set(present)]
    if unknown:
        raise KeyError(f"Values not found in adata.obs[{key!r}]: {unknown}; present: {list(present)[:20]}.")
    unassigned = [v for v in present if v not in seen]
    if unassigned:
        raise ValueError(
            f"adata.obs[{key!r}] values {unassigned} are in no split; list them in train/val/test "
            "(or pass train=None to put every unlisted value in train)."
        )
    if not lists[Key.TRAIN]:
        raise ValueError("The training set is empty.")
    labels = col.astype(str).map(seen)
    adata.obs[key_added] = pd.Categorical(labels, categories=[Key.TRAIN, Key.VAL, Key.TEST])
    adata.uns[key_added] = {"params": {"key": key, **{k: list(v) for k, v in lists.items()}}}
    counts = adata.obs[key_added].value_counts()
    logger.info(
        "split_by: %s (train %d, val %d, test %d spots).",
        key,
        counts.get(Key.TRAIN, 0),
        counts.get(Key.VAL, 0),
        counts.get(Key.TEST, 0),
    )
