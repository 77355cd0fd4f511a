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
