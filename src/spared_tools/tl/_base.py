"""What every model of ``sp.tl`` shares: the registry, the save format and the two sanitisers.

* **Registry.** :func:`register_model` names a model class (``"SpaCKLE"``, ``"GeneQuery"``,
  ``"Ridge"`` ...); a saved model records that name and :func:`load_model` finds the class through it
  (no ``importlib`` lookups of module paths that a refactor would break).
* **One save format.** A model directory holds ``model.json`` (format version, model name, package
  version, ``var_names`` the model was trained on, image size, every setting) and ``weights.pt``
  (tensors only, read back with ``torch.load(weights_only=True)``). :func:`write_model` writes both
  into a temporary sibling directory and renames it into place (:func:`spared_tools._atomic.atomic_dir`),
  so a crash never leaves a half-written model where a good one was, and an existing model is only
  replaced with ``overwrite=True``.
* **One JSON sanitiser** (:func:`to_json`, for ``model.json``) and **one ``.uns`` sanitiser**
  (:func:`to_uns`, for what the tools write into ``adata.uns`` so that ``.h5ad`` can store it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from spared_tools._atomic import atomic_dir

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "WEIGHTS_FILE",
    "check_image_size",
    "check_saved_genes",
    "load_model",
    "model_class",
    "read_model",
    "register_model",
    "to_json",
    "to_uns",
    "write_model",
]

FORMAT_VERSION = 2
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"

_MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: record the class under ``name`` (what ``model.json`` stores).

    Parameters
    ----------
    name
        Registry name of the model (unique).

    Returns
    -------
    The decorator (it sets ``cls.model_name`` and returns the class unchanged).
    """

    def deco(cls: T) -> T:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"A model named {name!r} is already registered ({_MODELS[name].__name__}).")
        _MODELS[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def model_class(name: str) -> type:
    """The class registered under ``name`` (clear error listing the known names otherwise)."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"Unknown model {name!r}; the registered models are {sorted(_MODELS)}.") from None


def to_json(obj: Any) -> Any:
    """JSON-ready copy of ``obj``: NumPy scalars and arrays, tuples, paths and DataFrames converted.

    Non-finite floats become ``None``. Anything else that JSON cannot hold raises a ``TypeError`` naming
    the type, so that nothing is silently dropped from a saved model.
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_json(v) for v in obj.tolist()]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, pd.DataFrame):
        return {str(c): to_json(obj[c].tolist()) for c in obj.columns}
    raise TypeError(f"A {type(obj).__name__} cannot be written to JSON.")


def to_uns(obj: Any) -> Any:
    """Make ``obj`` writable to ``.h5ad``: drop ``None``, lists of records become DataFrames."""
    if isinstance(obj, Mapping):
        return {str(k): to_uns(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        if obj and all(isinstance(v, Mapping) for v in obj):
            return pd.DataFrame(list(obj))
        if obj and all(isinstance(v, str) for v in obj):
            return np.asarray(obj, dtype=object)
        if all(isinstance(v, bool | int | float | np.number) for v in obj):
            return np.asarray(obj)
        return json.dumps(obj, default=str)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("spared-tools")
    except Exception:
        return "unknown"


def write_model(
    path: str | os.PathLike,
    *,
    model: str,
    genes: list[str],
    config: Mapping[str, Any],
    weights: Mapping[str, Any],
    image_size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically (``model.json`` + ``weights.pt``).

    Parameters
    ----------
    path
        Directory to create.
    model
        Registry name of the model.
    genes
        The ``var_names`` the model was trained on (in its order).
    config
        Every setting needed to rebuild the model (JSON-sanitised with :func:`to_json`).
    weights
        Tensors (or nested dicts / lists of tensors) for ``weights.pt``.
    image_size
        ``(height, width)`` of the training patches, for image models.
    overwrite
        Replace an existing model directory; otherwise an existing ``path`` is an error.

    Returns
    -------
    The directory written.
    """
    import torch

    if model not in _MODELS:
        raise ValueError(f"Unknown model {model!r}; the registered models are {sorted(_MODELS)}.")
    header = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "spared_tools": _package_version(),
        "genes": [str(g) for g in genes],
        "image_size": None if image_size is None else [int(image_size[0]), int(image_size[1])],
        "config": to_json(config),
    }
    target = Path(path)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # an empty folder (e.g. made for the model) holds nothing to protect
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace the model saved there.")
    with atomic_dir(target, overwrite=overwrite) as tmp:
        torch.save(dict(weights), tmp / WEIGHTS_FILE)
        (tmp / MODEL_FILE).write_text(json.dumps(header, indent=1))
    return target


def read_model(
    path: str | os.PathLike, *, expected: str | tuple[str, ...] | None = None
) -> tuple[dict[str, Any], dict]:
    """Read ``(header, weights)`` of a model directory, checking the format and the model name.

    Parameters
    ----------
    path
        Directory written by :func:`write_model`.
    expected
        Registry name(s) the caller can load (``None``: any).

    Returns
    -------
    The parsed ``model.json`` and the tensors of ``weights.pt``.
    """
    import torch

    d = Path(path)
    if not (d / MODEL_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} does not hold a saved model ({MODEL_FILE} + {WEIGHTS_FILE}).")
    header = json.loads((d / MODEL_FILE).read_text())
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{d} was saved in model format {version!r} by spared_tools {header.get('spared_tools', '?')}; "
            f"this version ({_package_version()}) reads format {FORMAT_VERSION}: upgrade spared_tools."
        )
    if version < FORMAT_VERSION:
        raise ValueError(f"{d} uses the retired model format {version}; retrain and save the model again.")
    name = header.get("model")
    model_class(str(name))  # known?
    if expected is not None:
        allowed = (expected,) if isinstance(expected, str) else expected
        if name not in allowed:
            raise TypeError(f"{d} holds a {name} model, not a {' / '.join(allowed)} model.")
    weights = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return header, weights


def check_saved_genes(genes: list[str], var_names: pd.Index, what: str, *, exact: bool = False) -> None:
    """Clear ``KeyError`` when ``var_names`` lacks genes of a saved model (or, with ``exact``, differs)."""
    missing = [g for g in genes if g not in var_names]
    extra = [g for g in var_names if g not in set(genes)] if exact else []
    if missing or extra:
        show = ", ".join(map(repr, (missing or extra)[:10])) + (" …" if len(missing or extra) > 10 else "")
        if missing:
            raise KeyError(
                f"The {what} was trained on {len(genes)} genes; {len(missing)} of them are not in "
                f"adata.var_names ({show}). Load it for data with the same genes."
            )
        raise KeyError(
            f"The {what} was trained on {len(genes)} genes but adata has {len(extra)} others ({show}); "
            "it completes exactly its own genes: subset adata to them."
        )


def check_image_size(
    saved: tuple[int, int] | None, found: tuple[int, int] | None, what: str, key: str
) -> None:
    """Clear ``ValueError`` when the patches of ``adata`` are not the size a model was trained on."""
    if saved is None or found is None or tuple(saved) == tuple(found):
        return
    raise ValueError(
        f"The {what} was trained on {saved[0]}x{saved[1]} px patches but adata's {key!r} patches are "
        f"{found[0]}x{found[1]} px; re-extract them with sp.pp.extract_patches(adata, size={saved[0]})."
    )


def load_model(path: str | Path, adata: Any = None) -> Any:
    """Load any saved model of the package: the class comes from the registry name in ``model.json``.

    Parameters
    ----------
    path
        Directory written by a model's ``save``.
    adata
        The data to use it on (checked for the model's genes and image size; SpaCKLE needs it).

    Returns
    -------
    The trained model.
    """
    header, _ = read_model(path)
    cls = model_class(header["model"])
    return cls.load(path, adata)  # type: ignore[attr-defined]
