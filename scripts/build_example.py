"""Build the bundled example data set of ``sp.datasets.example()`` from ../shared (run once, commit the output).

Source: the STUtility mouse olfactory bulb (MOB) sections, legacy ST 2k array (checkerboard layout),
MIT licence, github.com/jbergenstrahle/STUtility @ 9a8f421 (``inst/extdata/counts``), as converted to
``.h5ad`` in ``../shared/data/stutility_mob``. Gene symbols are added from GENCODE vM33 (basic) gene
lines (``../shared/data/gene_annotations``), matching Ensembl gene ids without their version suffix.

Writes into ``src/spared_tools/_data/``:

* ``example_mob.h5ad``: the first two sections (MOB1, MOB2), counts as int32 CSR exactly as published,
  obs/var/obsm/uns without images (gzip-compressed);
* ``example_mob_<section>.jpg``: each section's image (the image *is* the full-resolution pixel space of
  the spot coordinates), JPEG quality 90.

Usage: ``.venv/bin/python scripts/build_example.py``
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "src" / "spared_tools" / "_data"
SECTIONS = ["MOB1", "MOB2"]
JPEG_QUALITY = 90


def gencode_symbols(gtf: Path) -> dict[str, str]:
    """Ensembl gene id (no version) -> gene_name from the gene lines of a GENCODE GTF."""
    pat_id = re.compile(r'gene_id "([^"]+)"')
    pat_name = re.compile(r'gene_name "([^"]+)"')
    out: dict[str, str] = {}
    with gzip.open(gtf, "rt") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            fields = line.split("\t", 8)
            if len(fields) < 9 or fields[2] != "gene":
                continue
            gid, name = pat_id.search(fields[8]), pat_name.search(fields[8])
            if gid and name:
                out[gid.group(1).split(".")[0]] = name.group(1)
    return out


def main() -> None:
    symbols = gencode_symbols(SHARED / "gene_annotations" / "gencode.vM33.basic.annotation.gtf.gz")
    slides = []
    for s in SECTIONS:
        a = ad.read_h5ad(SHARED / "stutility_mob" / f"stutility_{s}.h5ad")
        (lib,) = a.uns["spatial"]
        img = a.uns["spatial"][lib]["images"]["hires"]
        assert img.dtype == np.uint8 and a.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"] == 1.0
        Image.fromarray(img).save(OUT / f"example_mob_{s}.jpg", quality=JPEG_QUALITY, optimize=True)
        X = sp.csr_matrix(a.X).astype(np.int32)
        assert np.array_equal(X.toarray(), a.X.toarray())
        obs = pd.DataFrame(index=pd.Index(a.obs_names.astype(str)))
        obs["slide_id"] = s
        obs["array_row"] = a.obs["array_row"].to_numpy(np.int64)
        obs["array_col"] = a.obs["array_col"].to_numpy(np.int64)
        obs["array_row_adj"] = a.obs["array_row_adj"].to_numpy(np.float64)
        obs["array_col_adj"] = a.obs["array_col_adj"].to_numpy(np.float64)
        obs["pxl_row_in_fullres"] = a.obs["pxl_row_in_fullres"].to_numpy(np.float64)
        obs["pxl_col_in_fullres"] = a.obs["pxl_col_in_fullres"].to_numpy(np.float64)
        obs["in_tissue"] = a.obs["in_tissue"].to_numpy(np.int64)
        gene_ids = a.var_names.astype(str)
        var = pd.DataFrame(index=pd.Index(gene_ids))
        var["gene_symbol"] = [symbols.get(g.split(".")[0], "") for g in gene_ids]
        b = ad.AnnData(X=X, obs=obs, var=var)
        b.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=np.float64)
        meta = {k: str(v) for k, v in a.uns["spatial"][lib]["metadata"].items()}
        sf = {
            k: (float(v) if isinstance(v, int | float | np.floating) else str(v))
            for k, v in a.uns["spatial"][lib]["scalefactors"].items()
        }
        b.uns["spatial"] = {s: {"scalefactors": sf, "metadata": meta}}
        slides.append(b)
    genes = slides[0].var_names
    assert all(list(b.var_names) == list(genes) for b in slides), "sections must share the gene list"
    out = ad.concat(slides, axis=0, merge="same", uns_merge="unique")
    out.obs["slide_id"] = pd.Categorical(out.obs["slide_id"], categories=SECTIONS)
    out.var = slides[0].var.copy()
    n_sym = int((out.var["gene_symbol"] != "").sum())
    out.uns["example_provenance"] = {
        "source_repo": "github.com/jbergenstrahle/STUtility",
        "source_commit": "9a8f421499e58b13340ee386db07b0eba923c88c",
        "source_files": "inst/extdata/counts/MOB{1,2}.tsv, alignment_table_MOB{1,2}.tsv, MOB{1,2}.jpg",
        "licence": "MIT, Copyright (c) 2019 Joseph Bergenstråhle (see spared_tools/_data/EXAMPLE_LICENSE)",
        "gene_symbols": f"GENCODE vM33 basic gene_name for {n_sym} of {out.n_vars} Ensembl ids (version stripped)",
        "sections": ",".join(SECTIONS),
        "image_files": ",".join(f"example_mob_{s}.jpg" for s in SECTIONS),
        "jpeg_quality": JPEG_QUALITY,
        "counts_sha256": hashlib.sha256(out.X.toarray().tobytes()).hexdigest(),
    }
    path = OUT / "example_mob.h5ad"
    out.write_h5ad(path, compression="gzip", compression_opts=9)
    total = sum(p.stat().st_size for p in OUT.glob("example_mob*"))
    print(
        f"wrote {path} ({out.n_obs} spots x {out.n_vars} genes, {n_sym} symbols); example files {total / 1e6:.2f} MB"
    )


if __name__ == "__main__":
    main()
