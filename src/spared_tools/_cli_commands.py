"""The ``complete`` and ``predict`` subcommands of ``spared-tools`` and the helpers every subcommand shares.

Kept apart from :mod:`spared_tools.cli` (the parser and ``main``) so that each module stays short.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from spared_tools._keys import Key

if TYPE_CHECKING:
    from anndata import AnnData


class DataError(ValueError):
    """Bad input data or files: reported as one line, exit status 1."""


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it.")


def _write_h5ad(adata, path: Path, force: bool) -> None:
    """Write ``adata`` atomically (temporary file renamed onto ``path``)."""
    from spared_tools._atomic import atomic_path

    with atomic_path(path, overwrite=force) as tmp:
        adata.write_h5ad(tmp, compression="gzip")


def _read_h5ad(path: Path, what: str):
    import anndata as ad

    if not path.exists():
        raise FileNotFoundError(f"Input {path} does not exist.")
    if path.is_dir() or path.suffix != ".h5ad":
        raise DataError(f"Input {path} is not an .h5ad file; {what} reads the .h5ad written by 'process'.")
    try:
        return ad.read_h5ad(path)
    except OSError as err:
        raise DataError(f"Cannot read {path} as .h5ad ({type(err).__name__}: {err}).") from err


def _require_layers(adata, layers: Sequence[str | None], path: Path) -> None:
    missing = [k for k in layers if k is not None and k not in adata.layers]
    if missing:
        raise DataError(
            f"{path} has no layers {missing} (it has {sorted(adata.layers)}); run 'spared-tools process' "
            "on the raw data first, or name other layers."
        )


def _cli_record(args: argparse.Namespace, argv: Sequence[str], **extra: Any) -> dict[str, Any]:
    import spared_tools as sp

    return {
        "argv": ["spared-tools", *argv],
        "input": str(args.input),
        "version": sp.__version__,
        **{k: v for k, v in extra.items() if v is not None},
    }


def _saved_model(path: Path | None) -> bool:
    return path is not None and (path / "model.json").is_file()


def _open_model_input(args: argparse.Namespace, what: str):
    """Check ``--output`` and ``--model`` before any work, then read the input .h5ad."""
    _check_output(args.output, args.force)
    if args.model is not None and args.model.exists() and not _saved_model(args.model):
        raise DataError(f"--model {args.model} exists but holds no saved model (no model.json).")
    return _read_h5ad(args.input, what)


def _complete(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import spared_tools as sp

    t0 = time.perf_counter()
    adata = _open_model_input(args, "complete")
    _require_layers(adata, [args.layer, args.mask_layer], args.input)
    loaded = _saved_model(args.model)
    train_args = {
        "split_key": args.split_key,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "mask_frac": args.mask_frac,
    }
    if loaded:
        model = sp.tl.SpackleModel.load(args.model, adata)
    elif args.fine_tune:
        raise DataError("--fine-tune needs --model naming a folder with a saved model.")
    else:
        model = sp.tl.SpackleModel(
            d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, seed=args.seed
        )
    train = args.fine_tune or not loaded
    sp.tl.spackle_complete(
        adata,
        layer=args.layer,
        mask_layer=args.mask_layer,
        library_key=args.library_key,
        key_added=args.key_added,
        model=model,
        train=train,
        device=args.device,
        **(train_args if train else {}),
    )
    if args.model is not None and (not loaded or args.fine_tune):
        model.save(args.model, overwrite=loaded or args.force)
    adata.uns[args.key_added]["cli"] = _cli_record(
        args, argv, model=None if args.model is None else str(args.model), model_loaded=loaded
    )
    _write_h5ad(adata, args.output, args.force)
    n = int(adata.uns[args.key_added].get("n_completed", 0))
    print(
        f"{args.input} -> {args.output}: layers[{args.key_added!r}] ({n} entries completed, model "
        f"{'loaded from ' + str(args.model) if loaded else 'trained'}"
        f"{', saved to ' + str(args.model) if args.model is not None and (not loaded or args.fine_tune) else ''}), "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


def _predict(args: argparse.Namespace, argv: Sequence[str]) -> int:

    import spared_tools as sp
    from spared_tools._atomic import atomic_path

    t0 = time.perf_counter()
    adata = _open_model_input(args, "predict")
    if args.gene_names is not None:
        if args.gene_names not in adata.var.columns:
            raise DataError(
                f"--gene-names {args.gene_names!r} is not a column of adata.var ({list(adata.var.columns)})."
            )
        names = adata.var[args.gene_names].astype(str).to_numpy()
        adata.var["var_names_in_input"] = adata.var_names.to_numpy()
        adata.var_names = [n if n and n != "nan" else g for n, g in zip(names, adata.var_names)]
        adata.var_names_make_unique()
    loaded = _saved_model(args.model)
    if not loaded:
        _require_layers(adata, [args.layer], args.input)
        if args.split_key is not None and args.split_key not in adata.obs.columns:
            raise DataError(
                f"adata.obs has no split column {args.split_key!r}; create one (process --split-by) or pass "
                "--split-key none to train on every spot."
            )
    patches_key = "patches"
    if patches_key not in adata.obsm and "X_image_features" not in adata.obsm:
        sp.pp.extract_patches(
            adata, size=args.patch_size, key_added=patches_key, library_key=args.library_key
        )
    if loaded:
        model = cast("sp.tl.GeneQueryModel", sp.tl.GeneQueryModel.load(args.model))
        unseen = cast(
            "AnnData | None",
            sp.tl.genequery_predict(
                adata,
                genes=args.genes,
                model=model,
                train=False,
                layer=args.layer,
                split_key=args.split_key,
                key_added=args.key_added,
            ),
        )
    else:
        model = sp.tl.GeneQueryModel(
            mode=args.mode, organism=args.organism, width=args.width, n_heads=args.n_heads, seed=args.seed
        ).set_params(
            library_key=args.library_key,
            max_epochs=args.max_epochs,
            batch_size=args.batch_size,
            device=args.device,
        )
        unseen = sp.tl.genequery_predict(
            adata,
            genes=args.genes,
            model=model,
            layer=args.layer,
            split_key=args.split_key,
            val_value=Key.VAL
            if args.split_key is not None and (adata.obs[args.split_key] == Key.VAL).any()
            else None,
            key_added=args.key_added,
        )
        if args.model is not None:
            model.save(args.model, overwrite=args.force)
    # patches are inputs, not results: keep the output small
    if patches_key in adata.obsm:
        del adata.obsm[patches_key]
    adata.uns[args.key_added]["cli"] = _cli_record(
        args, argv, model=None if args.model is None else str(args.model), model_loaded=loaded
    )
    _write_h5ad(adata, args.output, args.force)
    written = [str(args.output)]
    if args.maps is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.maps.mkdir(parents=True, exist_ok=True)
        seen = list(adata.uns[args.key_added]["seen_genes"])
        for gene in [*seen, *([] if unseen is None else list(unseen.var_names))]:
            target = adata if gene in seen else unseen
            layer = args.key_added if gene in seen else None
            fig = sp.pl.spatial(target, genes=[gene], layers=layer, show=False)
            if fig is None:
                continue
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in gene)
            with atomic_path(args.maps / f"{safe}.png", overwrite=True) as tmp:
                fig.savefig(tmp, dpi=80, bbox_inches="tight", format="png")
            plt.close(fig)
            written.append(str(args.maps / f"{safe}.png"))
    info = adata.uns[args.key_added]
    m = info.get("metrics") or {}
    pcc = f", test PCC {float(m['pcc_all']):.3f}" if "pcc_all" in m else ""
    print(
        f"{args.input} -> {', '.join(written[:3])}{' ...' if len(written) > 3 else ''}: "
        f"{len(info['seen_genes'])} genes in layers[{args.key_added!r}], {len(info['unseen_genes'])} unseen "
        f"in obsm['{args.key_added}_unseen']{pcc}, model {'loaded' if loaded else 'trained'}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0
