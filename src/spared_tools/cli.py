"""Command-line interface: ``spared-tools process | complete | predict | demo``.

``spared-tools process INPUT -o OUT.h5ad --organism human`` runs :func:`spared_tools.pp.spared_pipeline`
on a Space Ranger output folder, a her2st-style folder or an ``.h5ad`` file and writes the processed
``.h5ad``; every parameter (and the command line) is recorded in ``uns["spared"]``.
``spared-tools complete PROCESSED.h5ad -o OUT.h5ad`` trains (or, with ``--model`` holding a saved model,
loads) SpaCKLE and writes the completed layer (:func:`spared_tools.tl.spackle_complete`).
``spared-tools predict PROCESSED.h5ad -o OUT.h5ad --genes ...`` trains or loads GeneQuery and predicts
trained and unseen genes from the H&E image (:func:`spared_tools.tl.genequery_predict`), with optional
PNG maps. ``spared-tools demo -o DIR`` processes the bundled mouse olfactory bulb example.

Every output is written atomically (a temporary file renamed into place). Bad usage exits with status 2
(argparse); bad data exits with status 1 and a one-line message on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spared_tools._cli_commands import (
    DataError,
    _check_output,
    _complete,
    _predict,
    _write_h5ad,
)
from spared_tools._keys import Key

_VERBOSITY = {"quiet": 1, "info": 2, "debug": 3}
_FOLLOW = "=library-key"  # --combat-key default: follow --library-key


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default in ``--help`` and keeps the descriptions' line breaks."""


class _Renamed(argparse.Action):
    """A renamed option: using it is a usage error naming the new one."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=f"renamed {new}", **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        parser.error(f"{option_string} is now {self.new} (same meaning).")


def _positive_int(value: str) -> int:
    """Argparse type: an integer >= 1 (a bad value is a usage error, exit status 2)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def _none_or_str(value: str) -> str | None:
    return None if value.lower() in ("none", "") else value


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline parameters (defaults: SpaRED's published values)")
    g.add_argument("--organism", required=True, choices=["human", "mouse"], help="gene lengths for TPM")
    g.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    g.add_argument(
        "--library-key",
        type=_none_or_str,
        default=Key.SLIDE,
        help="obs column naming the slide of each spot; 'none': every spot is on one slide",
    )
    g.add_argument(
        "--split-key", type=_none_or_str, default=None, help="obs column with train/val/test labels"
    )
    g.add_argument("--train-value", default=Key.TRAIN, help="training label in --split-key")
    g.add_argument(
        "--split-by",
        default=None,
        help="create the split from this obs column (e.g. slide_id or patient) with --train/--val/--test",
    )
    g.add_argument(
        "--train", nargs="*", default=None, help="values of --split-by for training (default: the rest)"
    )
    g.add_argument("--val", nargs="*", default=[], help="values of --split-by for validation")
    g.add_argument("--test", nargs="*", default=[], help="values of --split-by for testing")
    g.add_argument(
        "--geometry",
        default="auto",
        choices=["auto", "hex", "square", "checkerboard"],
        help="spot lattice (hex = Visium, square = legacy ST 1k, checkerboard = ST 2k)",
    )
    g.add_argument(
        "--cell-min-counts", type=float, default=10, help="spots need a total count strictly above this"
    )
    g.add_argument(
        "--cell-max-counts", type=float, default=1e6, help="spots need a total count strictly below this"
    )
    g.add_argument(
        "--gene-min-counts", type=float, default=10, help="genes need a total count strictly above this"
    )
    g.add_argument(
        "--gene-max-counts", type=float, default=1e6, help="genes need a total count strictly below this"
    )
    g.add_argument(
        "--real-data-percentage",
        type=float,
        default=0.7,
        help="minimum mean expression fraction of the kept genes (SpaRED's rule)",
    )
    g.add_argument(
        "--top-moran-genes", type=int, default=None, help="default: 128 if > 320 genes survive, else 32"
    )
    g.add_argument(
        "--combat-key",
        type=_none_or_str,
        default=_FOLLOW,
        help="ComBat batch column, or 'none' (default: the --library-key column)",
    )
    g.add_argument("--wildcard-genes", type=Path, default=None, help="text file, one gene per line")
    g.add_argument(
        "--missing-lengths",
        default="drop",
        choices=["drop", "keep", "raise"],
        help="genes without a known length: drop them, keep them (median length) or stop",
    )
    g.add_argument("--gene-id-key", default=None, help="var column with the ids used for gene lengths")
    g.add_argument(
        "--n-rings", type=_positive_int, default=4, help="largest median-completion window (rings)"
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: sp.settings.device)")


def _add_common_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help=f"{what} to write")
    p.add_argument("--force", action="store_true", help="overwrite the output if it exists")


def _add_model(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model folder: loaded when it holds a saved {name} model, else the trained model is saved there",
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or auto (default None: sp.settings.device)"
    )


def _model_command(
    sub: Any,
    name: str,
    *,
    help: str,
    input_help: str,
    output: str,
    model: str,
    layer: tuple[str, str],
    key_added: tuple[str, str],
    split_help: str,
) -> argparse.ArgumentParser:
    """A model subcommand with the options ``complete`` and ``predict`` share.

    Input, output, ``--model``, the data keys, ``--seed`` and ``--device``; ``layer`` and ``key_added``
    are (default, help).
    """
    c = sub.add_parser(name, help=help, formatter_class=_Formatter)
    c.add_argument("input", type=Path, help=input_help)
    _add_common_output(c, output)
    _add_model(c, model)
    c.add_argument("--layer", default=layer[0], help=layer[1])
    c.add_argument("--key-added", default=key_added[0], help=key_added[1])
    c.add_argument(
        "--library-key", type=_none_or_str, default=Key.SLIDE, help="slide column, or 'none' for one slide"
    )
    c.add_argument("--split-key", type=_none_or_str, default=Key.SPLIT, help=split_help)
    c.add_argument("--seed", type=int, default=None, help="seed (default: sp.settings.seed)")
    _add_device(c)
    return c


def build_parser() -> argparse.ArgumentParser:
    """The ``spared-tools`` argument parser (also used to document the CLI)."""
    from spared_tools import __version__

    parser = argparse.ArgumentParser(
        prog="spared-tools",
        description="SpaRED preprocessing, SpaCKLE completion and GeneQuery prediction, on AnnData.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"spared-tools {__version__}")
    parser.add_argument("-v", "--verbosity", choices=list(_VERBOSITY), default="info", help="log level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "process",
        help="run the SpaRED pipeline on a dataset and write an .h5ad",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "input",
        type=Path,
        help="Space Ranger output folder, her2st-style folder, .h5ad file or SpatialData .zarr store",
    )
    p.add_argument("--table", default=None, help="SpatialData input: the table to read")
    _add_common_output(p, "processed .h5ad")
    p.add_argument(
        "--sections", nargs="*", default=None, help="her2st folders: sections to read (default: all)"
    )
    _add_pipeline_args(p)

    c = _model_command(
        sub,
        "complete",
        help="complete dropouts with SpaCKLE (train, or load --model) and write the .h5ad",
        input_help="processed .h5ad (from 'spared-tools process')",
        output="completed .h5ad",
        model="SpaCKLE",
        layer=(Key.MEDIAN, "layer to complete"),
        key_added=(Key.SPACKLE, "layer receiving the completed matrix"),
        split_help="obs column with train/val labels ('none': automatic validation slides)",
    )
    c.add_argument("--fine-tune", action="store_true", help="with a loaded --model: train it further")
    c.add_argument("--mask-layer", default=Key.MASK, help="bool layer, True where an entry was measured")
    c.add_argument(
        "--max-steps",
        type=_positive_int,
        default=1200,
        help="most training steps (early stopping ends sooner)",
    )
    c.add_argument("--batch-size", type=_positive_int, default=256, help="neighbourhoods per training step")
    c.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    c.add_argument("--mask-frac", type=float, default=0.3, help="observed entries hidden per neighbourhood")
    c.add_argument("--mask-prob", action=_Renamed, new="--mask-frac")
    c.add_argument("--d-model", type=_positive_int, default=128, help="transformer width")
    c.add_argument("--n-heads", type=_positive_int, default=4, help="attention heads")
    c.add_argument("--n-layers", type=_positive_int, default=2, help="transformer layers")

    q = _model_command(
        sub,
        "predict",
        help="predict expression from the H&E image with GeneQuery (train, or load --model)",
        input_help="processed .h5ad with images in uns['spatial'] (or patches)",
        output="output .h5ad (layers[KEY_ADDED], obsm[KEY_ADDED_unseen])",
        model="GeneQuery",
        layer=(Key.LOG, "log1p expression used as training targets"),
        key_added=(Key.GENEQUERY, "output layer / uns entry"),
        split_help="obs column with train/val/test labels ('none': train on every spot)",
    )
    q.add_argument(
        "--genes",
        nargs="+",
        default=None,
        help="genes to predict; names not in the data are 'unseen' and predicted from their text "
        "(default: the training genes)",
    )
    q.add_argument(
        "--gene-names",
        default=None,
        help="var column with the gene symbols the text queries use (e.g. gene_symbol for Ensembl ids)",
    )
    q.add_argument("--organism", default="human", choices=["human", "mouse"], help="gene descriptions")
    q.add_argument("--mode", default="gene", choices=["spot", "gene"], help="GeneQuery variant")
    q.add_argument(
        "--patch-size", type=_positive_int, default=224, help="H&E patch side in pixels (when extracted)"
    )
    q.add_argument("--max-epochs", type=_positive_int, default=7, help="training epochs")
    q.add_argument("--batch-size", type=_positive_int, default=8, help="sequences per training step")
    q.add_argument("--width", type=_positive_int, default=128, help="transformer width")
    q.add_argument("--n-heads", type=_positive_int, default=8, help="attention heads")
    q.add_argument("--maps", type=Path, default=None, help="folder for one PNG map per predicted gene")

    d = sub.add_parser(
        "demo", help="process the bundled MOB example and draw the top Moran gene", formatter_class=_Formatter
    )
    d.add_argument("-o", "--output", "--out", dest="output", type=Path, required=True, help="output folder")
    _add_device(d)
    return parser


def read_input(path: Path, *, sections: Sequence[str] | None = None, table: str | None = None):
    """Read an ``.h5ad`` file, a SpatialData ``.zarr`` store, a her2st-style folder or a Space Ranger folder.

    Parameters
    ----------
    path
        File or folder.
    sections
        her2st sections to read (``None``: all).
    table
        SpatialData table to read (``None``: ``"table"``, or the store's only table).

    Returns
    -------
    The AnnData and a short description of the input kind.
    """
    import anndata as ad

    import spared_tools as sp

    if not path.exists():
        raise FileNotFoundError(f"Input {path} does not exist.")
    if path.is_file():
        if path.suffix != ".h5ad":
            raise DataError(f"Input file {path} is not an .h5ad file; pass a folder or an .h5ad.")
        try:
            return ad.read_h5ad(path), "h5ad"
        except OSError as err:
            raise DataError(f"Cannot read {path} as .h5ad ({type(err).__name__}: {err}).") from err
    if path.suffix == ".zarr":
        try:
            import spatialdata
        except ImportError as err:
            raise DataError(
                f"{path} is a .zarr store; reading SpatialData needs pip install 'spared-tools[spatialdata]'."
            ) from err
        try:
            sdata = spatialdata.read_zarr(path)
        except Exception as err:  # spatialdata raises many kinds on a store it cannot read
            raise DataError(f"Cannot read {path} as SpatialData ({type(err).__name__}: {err}).") from err
        names = list(sdata.tables)
        if table is None:
            if "table" not in names and len(names) != 1:
                raise DataError(f"{path} holds tables {names}; choose one with --table.")
            table = "table" if "table" in names else names[0]
        return sp.io.from_spatialdata(sdata, table=table), "spatialdata"
    for root in (path, path / "data"):
        if (root / "ST-cnts").is_dir():
            return sp.io.read_her2st(root, sections, images=False), "her2st"
    markers = ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix", "spatial")
    if any((path / m).exists() for m in markers) or any((path / "outs" / m).exists() for m in markers):
        root = path / "outs" if (path / "outs").is_dir() and not (path / "spatial").exists() else path
        a = sp.io.read_visium(root, load_images=False)
        if Key.SLIDE not in a.obs.columns:
            a.obs[Key.SLIDE] = path.name
        return a, "visium"
    raise ValueError(
        f"Cannot tell what {path} holds: expected an .h5ad file, a folder with ST-cnts/ (her2st layout) or a "
        "Space Ranger output folder (filtered_feature_bc_matrix[.h5] and spatial/)."
    )


def _process(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import spared_tools as sp

    _check_output(args.output, args.force)
    t0 = time.perf_counter()
    adata, kind = read_input(args.input, sections=args.sections, table=args.table)
    split_key = args.split_key
    if args.split_by is not None:
        sp.pp.split_by(adata, key=args.split_by, train=args.train, val=args.val, test=args.test)
        split_key = split_key or Key.SPLIT
    wildcard = None
    if args.wildcard_genes is not None:
        wildcard = [g.strip() for g in args.wildcard_genes.read_text().splitlines() if g.strip()]
    out = sp.pp.spared_pipeline(
        adata,
        organism=args.organism,
        layer=args.layer,
        split_key=split_key,
        train_value=args.train_value,
        library_key=args.library_key,
        geometry=args.geometry,
        cell_min_counts=args.cell_min_counts,
        cell_max_counts=args.cell_max_counts,
        gene_min_counts=args.gene_min_counts,
        gene_max_counts=args.gene_max_counts,
        real_data_percentage=args.real_data_percentage,
        top_moran_genes=args.top_moran_genes,
        combat_key=True if args.combat_key == _FOLLOW else args.combat_key,
        wildcard_genes=wildcard,
        missing_lengths=args.missing_lengths,
        gene_id_key=args.gene_id_key,
        n_rings=args.n_rings,
        device=args.device,
    )
    out.uns[Key.PIPELINE]["cli"] = {
        "argv": ["spared-tools", *argv],
        "input": str(args.input),
        "input_kind": kind,
        "split_by": None
        if args.split_by is None
        else {"key": args.split_by, "train": args.train, "val": args.val, "test": args.test},
        "version": sp.__version__,
    }
    _write_h5ad(out, args.output, args.force)
    print(
        f"{args.input} ({kind}, {adata.n_obs} spots x {adata.n_vars} genes) -> {args.output}: "
        f"{out.n_obs} spots x {out.n_vars} genes, layers {sorted(out.layers)}, {time.perf_counter() - t0:.1f} s"
    )
    return 0


def _expression_map(adata, gene: str, label: str, path: Path) -> None:
    """Slides x (raw counts, log2(TPM+1), median-completed) maps of one gene; log layers share a scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import scipy.sparse as sps

    import spared_tools as sp

    def values(layer):
        col = adata[:, gene].layers[layer]
        return np.asarray(col.toarray() if sps.issparse(col) else col, dtype=float).ravel()

    log_max = float(max(values(Key.LOG).max(), values(Key.MEDIAN).max()))
    panels: list[tuple[str, str, dict[str, Any]]] = [
        (Key.COUNTS, "raw counts", {"vmin": 0.0, "vmax": "p99"}),
        (Key.LOG, "log2(TPM + 1)", {"vmin": 0.0, "vmax": log_max}),
        (Key.MEDIAN, "median-completed", {"vmin": 0.0, "vmax": log_max}),
    ]
    slides = list(adata.obs[Key.SLIDE].cat.categories)
    fig, axes = plt.subplots(
        len(slides), len(panels), figsize=(4.2 * len(panels), 3.2 * len(slides)), squeeze=False
    )
    for r, slide in enumerate(slides):
        for c, (layer, title, scale) in enumerate(panels):
            sp.pl.spatial(adata, gene, layers=layer, slides=slide, ax=axes[r, c], show=False, **scale)
            axes[r, c].set_title(f"{slide}: {label}\n{title}", fontsize="medium")
    fig.savefig(path, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)


def _demo(args: argparse.Namespace) -> int:
    import spared_tools as sp
    from spared_tools._atomic import atomic_path

    t0 = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    adata = sp.datasets.example()
    out = sp.pp.spared_pipeline(adata, organism="mouse", geometry="checkerboard", device=args.device)
    h5 = args.output / "example_processed.h5ad"
    _write_h5ad(out, h5, True)
    top = out.var[Key.MORAN_I].astype(float).idxmax()
    symbol = out.var["gene_symbol"].get(top, "") if "gene_symbol" in out.var else ""
    png = args.output / "expression_map.png"
    with atomic_path(png) as tmp:
        _expression_map(out, top, symbol or top, tmp)
    st = out.uns[Key.PIPELINE]["stats"]
    print("spared-tools demo: bundled mouse olfactory bulb example (2 sections, ST 2k)")
    print(f"  input          : {adata.n_obs} spots x {adata.n_vars} genes")
    print(f"  after filtering: {st['n_obs_out']} spots x {st['n_vars_out']} genes")
    print(f"  selected       : {out.n_vars} genes by Moran's I; ComBat {st['combat']}")
    print(f"  top Moran gene : {top} {symbol} (I = {out.var.loc[top, Key.MORAN_I]:.3f})")
    print(f"  wrote          : {h5}, {png} ({time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spared-tools`` command.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    Exit status: 0 on success, 1 on an input or data error (a one-line message on stderr, no traceback),
    2 on bad usage (argparse's message and usage line).
    """
    import spared_tools as sp

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    sp.settings.verbosity = _VERBOSITY[args.verbosity]
    commands = {"process": _process, "complete": _complete, "predict": _predict}
    try:
        if args.command in commands:
            return commands[args.command](args, argv)
        return _demo(args)
    except (OSError, KeyError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        line = " ".join(str(msg).split())  # one line, whatever the message held
        print(f"spared-tools {args.command}: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
