from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from spared_tools.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path


def test_demo_writes_h5ad_and_map(tmp_path, capsys):
    rc = main(["-v", "quiet", "demo", "--out", str(tmp_path / "demo")])
    assert rc == 0
    h5 = tmp_path / "demo" / "example_processed.h5ad"
    png = tmp_path / "demo" / "expression_map.png"
    assert h5.exists() and png.stat().st_size > 10_000
    out = ad.read_h5ad(h5)
    assert {"counts", "tpm", "log1p", "median", "combat", "deltas", "mask"} <= set(out.layers)
    assert out.uns["spared"]["params"]["organism"] == "mouse"
    assert out.uns["spared"]["params"]["geometry"] == "checkerboard"
    text = capsys.readouterr().out
    top = out.var["moran_I"].astype(float).idxmax()
    assert "top Moran gene" in text and top in text
    assert with_png_header(png)


def with_png_header(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_process_h5ad_records_every_parameter(tmp_path, visium_hex, capsys):
    src = tmp_path / "in.h5ad"
    visium_hex.write_h5ad(src)
    dst = tmp_path / "out" / "processed.h5ad"
    argv = [
        "process", str(src), "-o", str(dst), "--organism", "mouse", "--top-moran-genes", "16",
        "--combat-key", "none", "--missing-lengths", "keep", "--real-data-percentage", "0.6", "--n-rings", "3",
    ]  # fmt: skip
    assert main(argv) == 0
    out = ad.read_h5ad(dst)
    p = out.uns["spared"]["params"]
    assert p["top_moran_genes"] == 16 and p["combat_key"] is None and p["missing_lengths"] == "keep"
    assert p["real_data_percentage"] == 0.6 and p["n_rings"] == 3
    assert list(out.uns["spared"]["cli"]["argv"]) == ["spared-tools", *argv]
    assert out.uns["spared"]["cli"]["input_kind"] == "h5ad"
    assert out.n_vars == 16 and "combat" not in out.layers
    assert "processed.h5ad" in capsys.readouterr().out
    # refuses to overwrite without --force
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


def test_process_her2st_folder_with_split(tmp_path):
    folder = shared_path("her2st_raw")
    dst = tmp_path / "her2st.h5ad"
    argv = [
        "-v", "quiet", "process", str(folder), "-o", str(dst), "--organism", "human", "--sections", "A1", "B1", "C1",
        "--split-by", "slide_id", "--train", "A1", "B1", "--test", "C1", "--combat-key", "patient",
        "--geometry", "square",
    ]  # fmt: skip
    assert main(argv) == 0
    out = ad.read_h5ad(dst)
    assert sorted(out.obs["slide_id"].unique()) == ["A1", "B1", "C1"]
    assert out.uns["spared"]["params"]["split_key"] == "split"
    assert out.uns["spared"]["stats"]["moran_fitted_on"].startswith("training slides")
    train = (out.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(out.layers["deltas"][train].mean(0, dtype=np.float64), 0, atol=1e-4)


def test_process_space_ranger_folder(tmp_path):
    folder = shared_path("visium_cytassist_mouse_raw")
    dst = tmp_path / "visium.h5ad"
    assert main(["-v", "quiet", "process", str(folder), "-o", str(dst), "--organism", "mouse"]) == 0
    out = ad.read_h5ad(dst)
    assert out.uns["spared"]["cli"]["input_kind"] == "visium"
    assert out.uns["spatial_neighbors"]["params"]["geometry"] == "hex"
    assert "combat" not in out.layers  # a single slide: ComBat skipped
    assert out.n_obs > 1000


def test_process_errors(tmp_path, capsys):
    assert (
        main(["process", str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "o.h5ad"), "--organism", "human"])
        == 1
    )
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        main(["process", str(tmp_path / "empty"), "-o", str(tmp_path / "o.h5ad"), "--organism", "human"]) == 1
    )
    assert "Cannot tell" in capsys.readouterr().err
    bad = ad.AnnData(X=np.ones((3, 2), dtype=np.float32))
    bad.write_h5ad(tmp_path / "bad.h5ad")
    assert (
        main(["process", str(tmp_path / "bad.h5ad"), "-o", str(tmp_path / "o.h5ad"), "--organism", "human"])
        == 1
    )
    assert "slide column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["process", str(tmp_path / "bad.h5ad"), "-o", str(tmp_path / "o.h5ad"), "--organism", "yeast"])


def test_entry_point_subprocess():
    res = subprocess.run(
        [sys.executable, "-m", "spared_tools.cli", "process", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--real-data-percentage" in res.stdout and "--organism" in res.stdout


# ---------------------------------------------------------------- every subcommand (issue 20 item 6)


def _subparsers():
    import argparse

    from spared_tools.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def test_help_documents_every_option_and_shows_defaults(capsys):
    import argparse

    parser, subs = _subparsers()
    assert set(subs) == {"process", "complete", "predict", "demo"}
    for name, p in subs.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"-o", "--output"} <= opts, name  # one name for the output everywhere
        assert "--out" not in opts or name == "demo"  # demo keeps --out as an alias
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        if name != "demo":
            assert "(default: " in text
    assert "(default: 1200)" in _help("complete") and "(default: 224)" in _help("predict")


def _help(name):
    res = subprocess.run(
        [sys.executable, "-m", "spared_tools.cli", name, "--help"], capture_output=True, text=True, check=True
    )
    return " ".join(res.stdout.split())


def test_complete_defaults_equal_the_library_defaults():
    """The CLI's SpaCKLE options default to what sp.tl.spackle_complete does (no drift after a change)."""
    import inspect

    import spared_tools as sp
    from spared_tools.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    complete = sub.choices["complete"]
    lib = inspect.signature(sp.tl.spackle_complete).parameters
    for opt in ("max_steps", "batch_size", "lr", "mask_frac", "d_model", "n_heads", "n_layers"):
        assert complete.get_default(opt) == lib[opt].default, opt


def test_bad_usage_exits_2(capsys):
    for argv in (
        ["complete"],
        ["predict", "x.h5ad"],
        ["complete", "x.h5ad", "-o", "y.h5ad", "--max-steps", "a"],
        ["complete", "x.h5ad", "-o", "y.h5ad", "--max-steps", "0"],
        ["predict", "x.h5ad", "-o", "y.h5ad", "--patch-size", "-3"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "usage:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def processed_example(tmp_path_factory):
    import spared_tools as sp

    d = tmp_path_factory.mktemp("cli")
    src = d / "example.h5ad"
    sp.datasets.example().write_h5ad(src)
    dst = d / "processed.h5ad"
    assert main(["-v", "quiet", "process", str(src), "-o", str(dst), "--organism", "mouse"]) == 0
    return dst


def test_complete_trains_saves_and_loads(processed_example, tmp_path, capsys):
    out1, out2, model = tmp_path / "c1.h5ad", tmp_path / "c2.h5ad", tmp_path / "spackle_model"
    common = ["--max-steps", "3", "--batch-size", "32", "--d-model", "32", "--seed", "3"]
    argv = [
        "-v",
        "quiet",
        "complete",
        str(processed_example),
        "-o",
        str(out1),
        "--model",
        str(model),
        *common,
    ]
    assert main(argv) == 0
    assert (model / "model.json").is_file() and "saved to" in capsys.readouterr().out
    a = ad.read_h5ad(out1)
    mask = a.layers["mask"]
    np.testing.assert_array_equal(a.layers["spackle"][mask], a.layers["median"][mask])
    assert np.isfinite(a.layers["spackle"]).all() and a.uns["spackle"]["cli"]["model_loaded"] == False  # noqa: E712
    # the saved model, loaded: the same completion without training
    assert (
        main(["-v", "quiet", "complete", str(processed_example), "-o", str(out2), "--model", str(model)]) == 0
    )
    b = ad.read_h5ad(out2)
    assert b.uns["spackle"]["cli"]["model_loaded"] == True  # noqa: E712
    assert not b.uns["spackle"]["params"]["trained_here"]
    np.testing.assert_allclose(b.layers["spackle"], a.layers["spackle"], rtol=1e-5, atol=1e-5)
    # --fine-tune trains the loaded model further and saves it back over the folder
    stamp = (model / "weights.pt").read_bytes()
    argv3 = ["-v", "quiet", "complete", str(processed_example), "-o", str(tmp_path / "c3.h5ad"), "--model", str(model),
             "--fine-tune", "--max-steps", "2", "--batch-size", "32"]  # fmt: skip
    assert main(argv3) == 0
    c = ad.read_h5ad(tmp_path / "c3.h5ad")
    assert c.uns["spackle"]["params"]["trained_here"] and (model / "weights.pt").read_bytes() != stamp
    with pytest.raises(SystemExit):  # --fine-tune is a flag
        main(["complete", str(processed_example), "-o", "x.h5ad", "--fine-tune", "yes"])
    assert (
        main(
            [
                "-v",
                "quiet",
                "complete",
                str(processed_example),
                "-o",
                str(tmp_path / "c4.h5ad"),
                "--fine-tune",
            ]
        )
        == 1
    )
    assert "--fine-tune needs --model" in capsys.readouterr().err
    # an existing output is kept without --force
    before = out2.read_bytes()
    assert (
        main(["-v", "quiet", "complete", str(processed_example), "-o", str(out2), "--model", str(model)]) == 1
    )
    assert "--force" in capsys.readouterr().err and out2.read_bytes() == before


def _unseen_symbol(adata):
    from spared_tools.models.text import gene_text_table

    table = gene_text_table("mouse")
    present = set(adata.var["gene_symbol"].astype(str))
    return next(
        g for g in ("Gfap", "Mbp", "Plp1", "Snap25", "Calb2", "Pcp4") if g in table.index and g not in present
    )


def test_predict_trains_saves_loads_and_draws_maps(processed_example, tmp_path, capsys):
    proc = ad.read_h5ad(processed_example)
    unseen = _unseen_symbol(proc)
    seen = list(proc.var["gene_symbol"].astype(str)[:2])
    out1, out2, model, maps = (tmp_path / n for n in ("p1.h5ad", "p2.h5ad", "gq_model", "maps"))
    argv = [
        "-v", "quiet", "predict", str(processed_example), "-o", str(out1), "--gene-names", "gene_symbol",
        "--organism", "mouse", "--genes", *seen, unseen, "--patch-size", "32", "--max-epochs", "2",
        "--width", "32", "--n-heads", "4", "--split-key", "none", "--seed", "1", "--model", str(model),
        "--maps", str(maps),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 genes in layers['genequery'], 1 unseen" in text
    a = ad.read_h5ad(out1)
    assert (model / "model.json").is_file()
    pos = a.var_names.get_indexer(seen)
    assert (pos >= 0).all() and np.isfinite(a.layers["genequery"][:, pos]).all()
    assert list(a.obsm["genequery_unseen"].columns) == [unseen]
    assert "patches" not in a.obsm  # inputs are not copied into the result
    assert a.uns["genequery"]["params"]["library_key"] == "slide_id"  # --library-key reaches the model
    assert sorted(p.name for p in maps.glob("*.png")) == sorted(f"{g}.png" for g in [*seen, unseen])
    assert all(with_png_header(p) for p in maps.glob("*.png"))
    # loaded: the same predictions, no training
    argv2 = [
        "-v", "quiet", "predict", str(processed_example), "-o", str(out2), "--gene-names", "gene_symbol",
        "--genes", *seen, unseen, "--patch-size", "32", "--model", str(model),
    ]  # fmt: skip
    assert main(argv2) == 0
    b = ad.read_h5ad(out2)
    np.testing.assert_allclose(
        b.layers["genequery"][:, pos], a.layers["genequery"][:, pos], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        b.obsm["genequery_unseen"][unseen], a.obsm["genequery_unseen"][unseen], atol=1e-6
    )
    assert b.uns["genequery"]["cli"]["model_loaded"] == True  # noqa: E712


def test_bad_data_one_line_exit_1(tmp_path, capsys):
    raw = tmp_path / "raw.h5ad"
    ad.AnnData(X=np.ones((4, 3), dtype=np.float32)).write_h5ad(raw)
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"this is not an HDF5 file")
    cases = [
        (["complete", str(raw), "-o", str(tmp_path / "o.h5ad")], "run 'spared-tools process'"),
        (["predict", str(raw), "-o", str(tmp_path / "o.h5ad")], "run 'spared-tools process'"),
        (["complete", str(broken), "-o", str(tmp_path / "o.h5ad")], "Cannot read"),
        (["process", str(broken), "-o", str(tmp_path / "o.h5ad"), "--organism", "human"], "Cannot read"),
        (["complete", str(tmp_path / "missing.h5ad"), "-o", str(tmp_path / "o.h5ad")], "does not exist"),
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "o.h5ad").exists()  # nothing half-written
    # the same through the installed entry point: no traceback, exit 1
    res = subprocess.run(
        [sys.executable, "-m", "spared_tools.cli", "complete", str(broken), "-o", str(tmp_path / "o.h5ad")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_process_scanpy_layout_with_library_key_none(tmp_path, visium_hex):
    a = visium_hex.copy()
    del a.obs["slide_id"]
    src, dst = tmp_path / "scanpy_layout.h5ad", tmp_path / "p.h5ad"
    a.write_h5ad(src)
    argv = [
        "-v",
        "quiet",
        "process",
        str(src),
        "-o",
        str(dst),
        "--organism",
        "mouse",
        "--library-key",
        "none",
    ]
    assert main(argv) == 0
    out = ad.read_h5ad(dst)
    assert out.uns["spared"]["params"].get("library_key") is None
    assert "combat" not in out.layers and "slide_id" not in out.obs
