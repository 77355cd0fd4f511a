"""What every model of ``sp.tl`` shares: the base class, the registry, the save format and the sanitisers.

* **One contract** (:class:`BaseModel`, the base of :class:`~spared_tools.tl._predictor.Predictor` and
  :class:`~spared_tools.tl.SpackleModel`): the constructor takes the network's hyper-parameters and the
  seed only; ``train(adata, *, <data keys>, <optimisation>)`` binds the data and returns the model;
  ``save(dir, overwrite=False)`` / ``load(dir, adata=None)`` go through the one format below;
  ``is_trained``, ``history_``, ``train_info_`` and ``get_params()`` mean the same for every model.
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

import abc
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import pandas as pd

from spared_tools._atomic import atomic_dir
from spared_tools._validation import check_adata

__all__ = [
    "FORMAT_VERSION",
    "BaseModel",
    "SavedModel",
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


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str | np.generic)


def to_uns(obj: Any) -> Any:
    """Make ``obj`` writable to ``.h5ad``: drop ``None``, lists of flat records become DataFrames (of nested ones, groups)."""
    if isinstance(obj, Mapping):
        return {str(k): to_uns(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        if obj and all(isinstance(v, Mapping) for v in obj):
            if all(_is_scalar(x) for v in obj for x in v.values()):
                return pd.DataFrame(list(obj))
            # records holding lists or dicts (e.g. each ensemble member's epoch history): one group each
            return {str(i): to_uns(v) for i, v in enumerate(obj)}
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


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class SavedModel(NamedTuple):
    """What a model hands to :func:`write_model` (see :meth:`BaseModel._to_saved`)."""

    genes: list[str]
    config: dict[str, Any]
    weights: dict[str, Any]
    image_size: tuple[int, int] | None = None


M = TypeVar("M", bound="BaseModel")


class BaseModel(abc.ABC):
    """The base class of every model of :mod:`spared_tools.tl` (one contract, one save format).

    * The constructor takes the network's hyper-parameters and the seed, each stored as an attribute of
      the same name (read back by :meth:`get_params`).
    * ``train(adata, *, ...)`` binds the data (data keys such as ``layer=`` are its arguments), fills
      :attr:`history_` and :attr:`train_info_` and returns the model.
    * :meth:`save` / :meth:`load` write and read the package's one model format (``model.json`` +
      ``weights.pt``, :func:`write_model` / :func:`read_model`); ``load`` finds the saved class through the
      registry (:func:`register_model`).

    Subclasses implement :attr:`is_trained`, :meth:`_to_saved`, :meth:`_from_saved` and :meth:`_attach`.

    Attributes
    ----------
    history_
        Record of the last training (per-step or per-epoch metrics; its form depends on the model).
    train_info_
        Dict describing the last training (data keys, split, spot counts, seed, ...).
    """

    model_name: ClassVar[str]  # set by register_model
    seed: int
    history_: Any
    train_info_: dict[str, Any]

    @property
    @abc.abstractmethod
    def is_trained(self) -> bool:
        """``True`` once ``train`` (or :meth:`load`) has provided weights."""

    def _require_trained(self) -> None:
        """The one "not trained" error."""
        if not self.is_trained:
            name = type(self).__name__
            raise RuntimeError(
                f"This {name} is not trained; call model.train(adata) or {name}.load(dir, adata) first."
            )

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, read back from the attributes of the same name."""
        sig = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name, p in sig.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    # ---- persistence hooks ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _to_saved(self) -> SavedModel:
        """Genes, JSON settings, tensors and image size of the trained model."""

    @classmethod
    @abc.abstractmethod
    def _from_saved(cls: type[M], header: dict[str, Any], weights: dict[str, Any]) -> M:
        """Rebuild the trained model from what :func:`read_model` returned."""

    @abc.abstractmethod
    def _attach(self, adata: Any) -> None:
        """Check that ``adata`` fits the loaded model (clear errors otherwise) and bind it where the model keeps data."""

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Save the trained model to the directory ``path`` (``model.json`` + ``weights.pt``).

        The package's one model format: genes, settings, training record and weights, written into a
        temporary directory and renamed into place, so a failure never leaves a half-written model (nor
        touches a model already at ``path``).

        Parameters
        ----------
        path
            Directory to create (an existing one only with ``overwrite=True``).
        overwrite
            Replace a model saved at ``path``.

        Returns
        -------
        Nothing; writes ``model.json`` and ``weights.pt``.
        """
        self._require_trained()
        saved = self._to_saved()
        write_model(
            path,
            model=type(self).model_name,
            genes=list(saved.genes),
            config=saved.config,
            weights=saved.weights,
            image_size=saved.image_size,
            overwrite=overwrite,
        )

    @classmethod
    def load(cls: type[M], path: str | os.PathLike, adata: Any = None) -> M:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The directory given to :meth:`save`.
        adata
            The data the model will be used on (optional): checked against the model's genes, patch size
            or lattice, with a clear error when they differ, and bound to the model where it keeps data.

        Returns
        -------
        The trained model, of the class that was saved (found through the registry).
        """
        header, weights = read_model(path)
        klass = model_class(header["model"])
        if not (isinstance(klass, type) and issubclass(klass, cls)):
            raise TypeError(f"{path} holds a {header['model']} model, not a {cls.__name__}.")
        obj = klass._from_saved(header, weights)
        if adata is not None:
            check_adata(adata)
            obj._attach(adata)
        return obj

    def _repr_state(self) -> str:
        return "trained" if self.is_trained else "untrained"

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if _jsonable(v))
        return f"{type(self).__name__}({params}) [{self._repr_state()}]"
