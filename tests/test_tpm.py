from __future__ import annotations

import gzip
import importlib.util
import itertools
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sps

import spared_tools as sp

sys.path.insert(0, str(Path(__file__).parent))
from conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


def _build_script():
    spec = importlib.util.spec_from_file_location(
        "build_gene_lengths", ROOT / "scripts" / "build_gene_lengths.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- gene-length tables


def test_union_length_against_brute_force():
    union_length = _build_script().union_length
    rng = np.random.default_rng(0)
    for _ in range(200):
        ivs = []
        for _ in range(rng.integers(1, 8)):
            s = int(rng.integers(1, 200))
            ivs.append((s, s + int(rng.integers(0, 40))))
        covered = set(itertools.chain.from_iterable(range(s, e + 1) for s, e in ivs))
        assert union_length(ivs) == len(covered)
    assert union_length([(1, 10), (11, 20)]) == 20  # adjacent exons
    assert union_length([(5, 10), (1, 20)]) == 20  # nested


@pytest.mark.parametrize(
    ("organism", "ref"), [("human", "gene_length.txt.gz"), ("mouse", "gene_length_mouse.txt.gz")]
)
def test_bundled_lengths_equal_gtftools_merged(organism, ref):
    ref_df = pd.read_csv(shared_path("gene_annotations", ref), sep="\t")
    ref_df = ref_df[~ref_df["gene"].str.endswith("_PAR_Y")]
    ref_df = ref_df.assign(gene_id=ref_df["gene"].str.split(".").str[0]).drop_duplicates("gene_id")
    ours = sp.pp.gene_lengths(organism)
    assert not ours["gene_id"].duplicated().any()
    m = ours.merge(ref_df, on="gene_id", how="inner")
    assert len(m) == len(ref_df)  # every gene of the reference file is in our table
    np.testing.assert_array_equal(m["length"].to_numpy(), m["merged"].to_numpy())


def test_build_script_reproduces_bundled_table_on_gtf_head(tmp_path):
    """Union-of-exon lengths recomputed from the first genes of the GTF equal the shipped table."""
    gtf = shared_path("gene_annotations", "gencode.v43.basic.annotation.gtf.gz")
    head = tmp_path / "head.gtf.gz"
    with gzip.open(gtf, "rt") as src, gzip.open(head, "wt") as dst:
        for line in itertools.islice(src, 30000):
            dst.write(line)
    rows = _build_script().build_table(head)
    got = pd.DataFrame(rows, columns=["gene_id", "gene_name", "gene_type", "chrom", "length"]).iloc[:-1]
    ours = sp.pp.gene_lengths("human").set_index("gene_id").loc[got["gene_id"]]
    assert len(got) > 500
    np.testing.assert_array_equal(got["length"].to_numpy(), ours["length"].to_numpy())


def test_gene_lengths_lookup_symbols_and_versioned_ids():
    table = sp.pp.gene_lengths("human")
    gapdh = table.loc[table.gene_name == "GAPDH"].iloc[0]
    s = sp.pp.gene_lengths("human", ["GAPDH", "NOT_A_GENE"])
    assert s["GAPDH"] == gapdh["length"]
    assert np.isnan(s["NOT_A_GENE"])
    e = sp.pp.gene_lengths("human", [gapdh["gene_id"] + ".17", gapdh["gene_id"]])
    assert (e.to_numpy() == gapdh["length"]).all()
    m = sp.pp.gene_lengths("mouse", ["Gapdh"])
    assert m.iloc[0] > 0
    with pytest.raises(ValueError, match="Unknown organism"):
        sp.pp.gene_lengths("zebrafish")


# ---------------------------------------------------------------- tpm


def _counts(n_obs=30, genes=("GAPDH", "ACTB", "MT-CO1", "ERBB2", "KRT19"), sparse=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(3.0, (n_obs, len(genes))).astype(np.float32)
    a = ad.AnnData(X=sps.csr_matrix(X) if sparse else X)
    a.var_names = list(genes)
    a.obs_names = [f"spot{i}" for i in range(n_obs)]
    return a


@pytest.mark.parametrize("sparse", [False, True])
def test_tpm_rows_sum_to_1e6_and_match_formula(sparse):
    a = _counts(sparse=sparse)
    X = a.X.toarray() if sparse else a.X.copy()
    sp.pp.tpm(a, organism="human")
    tpm = a.layers["tpm"]
    assert sps.issparse(tpm) == sparse
    tpm = tpm.toarray() if sparse else tpm
    np.testing.assert_allclose(tpm.sum(1), 1e6, rtol=1e-5)
    L = sp.pp.gene_lengths("human", list(a.var_names)).to_numpy()
    rpk = X / L
    np.testing.assert_allclose(tpm, 1e6 * rpk / rpk.sum(1, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(a.var["gene_length"].to_numpy(), L)
    np.testing.assert_array_equal(a.X.toarray() if sparse else a.X, X)  # X untouched
    assert a.uns["tpm"]["params"]["id_type"] == "symbol"


def test_tpm_ensembl_ids_and_gene_id_key():
    table = sp.pp.gene_lengths("mouse")
    pick = table[table.gene_type == "protein_coding"].iloc[:6]
    a = _counts(genes=[g + ".3" for g in pick.gene_id])
    sp.pp.tpm(a, organism="mouse")
    np.testing.assert_array_equal(a.var["gene_length"].to_numpy(), pick["length"].to_numpy())
    b = _counts(genes=[f"feature{i}" for i in range(6)])
    b.var["ensembl"] = list(pick.gene_id)
    sp.pp.tpm(b, organism="mouse", gene_id_key="ensembl")
    np.testing.assert_allclose(b.layers["tpm"], a.layers["tpm"])
    with pytest.raises(KeyError, match="no column"):
        sp.pp.tpm(b, organism="mouse", gene_id_key="gene_ids")


def test_tpm_missing_genes_drop_keep_raise():
    genes = ("GAPDH", "ACTB", "FAM132A_RENAMED", "ERBB2")
    a = _counts(genes=genes)
    with pytest.raises(KeyError, match="FAM132A_RENAMED"):
        sp.pp.tpm(a, organism="human", missing="raise")
    assert "tpm" not in a.layers and a.n_vars == 4

    kept = sp.pp.tpm(a, organism="human", missing="keep", copy=True)
    assert kept.n_vars == 4
    L = sp.pp.gene_lengths("human", ["GAPDH", "ACTB", "ERBB2"]).to_numpy()
    assert kept.var.loc["FAM132A_RENAMED", "gene_length"] == np.median(L)
    assert kept.var["gene_length_imputed"].tolist() == [False, False, True, False]
    np.testing.assert_allclose(kept.layers["tpm"].sum(1), 1e6, rtol=1e-5)

    n_obs = a.n_obs
    X0 = a.X.copy()
    # dropping never happens to the user's object: in place it is refused, with copy=True it is a new one
    with pytest.raises(ValueError, match="would remove these genes from your AnnData in place"):
        sp.pp.tpm(a, organism="human", missing="drop")
    assert a.n_vars == 4 and "tpm" not in a.layers
    dropped = sp.pp.tpm(a, organism="human", missing="drop", copy=True)
    assert list(dropped.var_names) == ["GAPDH", "ACTB", "ERBB2"]
    assert dropped.n_obs == n_obs  # spots never dropped
    assert dropped.uns["tpm"]["genes_without_length"] == ["FAM132A_RENAMED"]
    np.testing.assert_allclose(dropped.layers["tpm"].sum(1), 1e6, rtol=1e-5)
    assert a.n_vars == 4 and "tpm" not in a.layers and "gene_length" not in a.var
    np.testing.assert_array_equal(a.X, X0)


@pytest.mark.parametrize("sparse", [False, True])
def test_tpm_default_mask_keeps_every_gene(sparse, spared_log):
    genes = ("GAPDH", "ACTB", "FAM132A_RENAMED", "ERBB2")
    a = _counts(genes=genes, sparse=sparse)
    X0 = a.X.toarray() if sparse else a.X.copy()
    sp.pp.tpm(a, organism="human")
    assert list(a.var_names) == list(genes)  # nothing removed from the user's AnnData
    assert a.var["has_gene_length"].tolist() == [True, True, False, True]
    assert np.isnan(a.var.loc["FAM132A_RENAMED", "gene_length"])
    tpm = a.layers["tpm"].toarray() if sparse else a.layers["tpm"]
    assert np.isnan(tpm[:, 2]).all()
    known = [0, 1, 3]
    L = sp.pp.gene_lengths("human", [genes[i] for i in known]).to_numpy()
    rpk = X0[:, known] / L
    np.testing.assert_allclose(tpm[:, known], 1e6 * rpk / rpk.sum(1, keepdims=True), rtol=1e-5)
    assert "1 of 4 genes" in spared_log.text and "has_gene_length" in spared_log.text
    # the explicit subset equals missing="drop" on a copy
    sub = a[:, a.var["has_gene_length"]].copy()
    ref = sp.pp.tpm(_counts(genes=genes, sparse=sparse), organism="human", missing="drop", copy=True)
    sub_t = sub.layers["tpm"].toarray() if sparse else sub.layers["tpm"]
    ref_t = ref.layers["tpm"].toarray() if sparse else ref.layers["tpm"]
    np.testing.assert_allclose(sub_t, ref_t, rtol=1e-6)


def test_tpm_refuses_duplicate_var_names():
    a = _counts(genes=("GAPDH", "ACTB", "GAPDH", "ERBB2"))
    with pytest.raises(ValueError, match=r"duplicated gene name.*'GAPDH' ×2"):
        sp.pp.tpm(a, organism="human")
    assert "tpm" not in a.layers
    b = _counts(genes=("g1", "g2", "g3"))
    b.var["symbol"] = ["GAPDH", "ACTB", "GAPDH"]
    with pytest.raises(ValueError, match=r"duplicated gene ids \('GAPDH'\)"):
        sp.pp.tpm(b, organism="human", gene_id_key="symbol")


def test_tpm_mixed_symbol_and_ensembl_ids(spared_log):
    table = sp.pp.gene_lengths("human")
    pc = table[table.gene_type == "protein_coding"]
    ens = list(pc.gene_id.iloc[:3])
    sym = ["GAPDH", "ACTB"]
    a = _counts(genes=ens + sym)
    sp.pp.tpm(a, organism="human")  # auto: each id looked up as its own kind
    expect = np.concatenate(
        [pc["length"].iloc[:3].to_numpy(), sp.pp.gene_lengths("human", sym, id_type="symbol").to_numpy()]
    )
    np.testing.assert_array_equal(a.var["gene_length"].to_numpy(), expect)
    assert a.uns["tpm"]["params"]["id_type"] == "mixed"
    assert "mixed: 3 look like Ensembl ids and 2 like gene symbols" in spared_log.text
    # forcing one kind: the message says the ids are mixed, how many of each, and what to do
    with pytest.raises(
        KeyError, match=r"mixed: 3 look like Ensembl ids and 2 like gene symbols.*id_type='auto'"
    ):
        sp.pp.tpm(_counts(genes=ens + sym), organism="human", id_type="ensembl", missing="raise")


def test_tpm_empty_spot_gets_zero_row():
    a = _counts()
    a.X[0] = 0
    sp.pp.tpm(a, organism="human")
    assert (a.layers["tpm"][0] == 0).all()
    np.testing.assert_allclose(a.layers["tpm"][1:].sum(1), 1e6, rtol=1e-5)


def test_tpm_custom_lengths():
    a = _counts(genes=("a", "b", "c"))
    lengths = pd.Series([1000.0, 2000.0, 500.0], index=["a", "b", "c"])
    sp.pp.tpm(a, organism="human", lengths=lengths)
    rpk = a.X / lengths.to_numpy()
    np.testing.assert_allclose(a.layers["tpm"], 1e6 * rpk / rpk.sum(1, keepdims=True), rtol=1e-5)


def test_tpm_bad_input():
    a = _counts()
    with pytest.raises(ValueError, match="Unknown organism"):
        sp.pp.tpm(a, organism="yeast")
    bad = a.copy()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sp.pp.tpm(bad, organism="human")
    bad.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        sp.pp.tpm(bad, organism="human")
    b = ad.AnnData(X=np.ones((3, 2), dtype=bool))
    b.var_names = ["GAPDH", "ACTB"]
    with pytest.raises(TypeError, match="numeric"):
        sp.pp.tpm(b, organism="human")
    c = _counts(genes=("x1", "x2"))
    with pytest.raises(ValueError, match="No gene could be matched"):
        sp.pp.tpm(c, organism="human")
    with pytest.raises(ValueError, match="missing must be 'mask', 'drop'"):
        sp.pp.tpm(a, organism="human", missing="ignore")
    with pytest.raises(KeyError, match="Layer 'counts' not found"):
        sp.pp.tpm(a, organism="human", layer="counts")


# ---------------------------------------------------------------- log1p


@pytest.mark.parametrize(("sparse", "base"), [(False, 2), (True, 2), (False, None), (True, 10)])
def test_log1p_equals_scanpy(sparse, base):
    a = _counts(sparse=sparse)
    sp.pp.tpm(a, organism="human", dtype=np.float64)
    sp.pp.log1p(a, base=base, dtype=None)
    ref = sc.pp.log1p(a, base=base, layer="tpm", copy=True).layers["tpm"]
    got = a.layers["log1p"]
    assert sps.issparse(got) == sparse
    dense = (lambda m: m.toarray()) if sparse else (lambda m: m)
    np.testing.assert_allclose(dense(got), dense(ref), rtol=1e-12)
    assert a.uns["log1p_layer"]["params"]["base"] == base


def test_log1p_float32_and_no_adata_copy():
    a = _counts()
    sp.pp.tpm(a, organism="human")
    tpm_before = a.layers["tpm"].copy()
    ident = id(a.layers["tpm"])
    sp.pp.log1p(a)
    assert a.layers["log1p"].dtype == np.float32
    assert id(a.layers["tpm"]) == ident
    np.testing.assert_array_equal(a.layers["tpm"], tpm_before)
    np.testing.assert_allclose(a.layers["log1p"], np.log2(tpm_before.astype(np.float64) + 1), rtol=1e-6)


def test_log1p_bad_input():
    a = _counts()
    with pytest.raises(KeyError, match="Layer 'tpm' not found"):
        sp.pp.log1p(a)
    with pytest.raises(ValueError, match="base"):
        sp.pp.log1p(a, layer=None, base=1)
    with pytest.raises(ValueError, match="equals the input layer"):
        sp.pp.log1p(a, layer="x", key_added="x")
    a.layers["neg"] = -np.ones(a.shape)
    with pytest.raises(ValueError, match="negative"):
        sp.pp.log1p(a, layer="neg")
