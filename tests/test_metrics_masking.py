"""The metrics and masking kernels against brute force (loops over genes / spots, scipy's pearsonr)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from spared_tools._kernels.masking import (
    check_mask_fraction,
    check_mask_fractions,
    hide_entries,
    hide_entries_torch,
)
from spared_tools._kernels.metrics import masked_metrics, pearson_from_moments, pearson_per_gene, top_genes
from spared_tools.models.spackle import MetricSums


def _data(seed=0, n=40, g=7):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, g))
    pred = truth + rng.normal(scale=0.7, size=(n, g))
    scored = rng.random((n, g)) < 0.4
    scored[:, 0] = False  # a gene never scored
    scored[0] = False  # a spot never scored
    scored[1, :] = False
    scored[1, 2] = True  # a spot with one scored entry
    return truth, pred, scored


def _brute(truth, pred, scored):
    err = (truth - pred)[scored]
    genes = [
        pearsonr(truth[scored[:, j], j], pred[scored[:, j], j])[0]
        for j in range(truth.shape[1])
        if scored[:, j].sum() >= 2
    ]
    spots = [
        pearsonr(truth[i, scored[i]], pred[i, scored[i]])[0]
        for i in range(truth.shape[0])
        if scored[i].sum() >= 2
    ]
    return {
        "MSE": np.mean(err**2),
        "MAE": np.mean(np.abs(err)),
        "PCC-gene": np.mean(genes),
        "PCC-spot": np.mean(spots),
        "n_scored": scored.sum(),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_metrics_and_the_streaming_sums_equal_brute_force(seed):
    truth, pred, scored = _data(seed)
    ref = _brute(truth, pred, scored)
    got = masked_metrics(truth, pred, scored)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-10), key
    sums = MetricSums(truth.shape[1])  # SpaCKLE's validation: the same sums, batch by batch
    for rows in np.array_split(np.arange(len(truth)), 3):
        sums.update(*(torch.from_numpy(a[rows]) for a in (truth, pred, scored)))
    for key, value in sums.compute().items():
        assert value == pytest.approx(ref[key], rel=1e-9), key


def test_masked_metrics_shapes_and_constant_sides():
    truth, pred, scored = _data()
    with pytest.raises(ValueError, match="one shape"):
        masked_metrics(truth, pred[:, :3], scored)
    const = pred.copy()
    const[:, 3] = 1.0  # constant predictions of gene 3: its correlation is undefined and left out
    ref = [pearsonr(truth[scored[:, j], j], pred[scored[:, j], j])[0] for j in (1, 2, 4, 5, 6)]
    assert masked_metrics(truth, const, scored)["PCC-gene"] == pytest.approx(np.mean(ref), rel=1e-10)
    r = pearson_from_moments(np.array([1.0]), *(np.ones(1),) * 5)
    assert np.isnan(r).all()


def test_pearson_per_gene_and_heg_hvg_against_brute_force():
    rng = np.random.default_rng(3)
    truth = rng.gamma(2.0, size=(30, 9))
    pred = truth + rng.normal(size=truth.shape)
    ref = [pearsonr(truth[:, j], pred[:, j])[0] for j in range(9)]
    np.testing.assert_allclose(pearson_per_gene(truth, pred), ref, rtol=1e-10)
    totals = [truth[:, j].sum() for j in range(9)]
    variances = [truth[:, j].var() for j in range(9)]
    assert list(top_genes(truth, 4, "total")) == sorted(range(9), key=lambda j: -totals[j])[:4]
    assert list(top_genes(truth, 4, "variance")) == sorted(range(9), key=lambda j: -variances[j])[:4]
    assert len(top_genes(truth, 50, "total")) == 9


def test_one_masking_rule_for_arrays_and_tensors():
    rng = np.random.default_rng(0)
    observed = rng.random((200, 50)) < 0.7
    hidden = hide_entries(observed, 0.3, np.random.default_rng(5))
    u = np.random.default_rng(5).random(observed.shape)  # brute force: the same uniform draws
    np.testing.assert_array_equal(hidden, (u < 0.3) & observed)
    assert not (hidden & ~observed).any()
    assert abs(hidden.sum() / observed.sum() - 0.3) < 0.02
    obs_t = torch.from_numpy(observed).reshape(20, 10, 50)
    g = torch.Generator().manual_seed(1)
    h = hide_entries_torch(obs_t, 0.3, 0.3, g)
    u_t = torch.rand(obs_t.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(h, (u_t < 0.3) & obs_t)
    hr = hide_entries_torch(obs_t, 0.1, 0.6, torch.Generator().manual_seed(2))
    frac = (hr.sum((1, 2)) / obs_t.sum((1, 2))).numpy()  # one fraction per item, within the range
    assert frac.min() > 0.02 and frac.max() < 0.7 and frac.std() > 0.05
    assert not (hr & ~obs_t).any()


def test_one_validator():
    assert check_mask_fraction(0.3) == (0.3, 0.3)
    assert check_mask_fraction((0.1, 0.5)) == (0.1, 0.5)
    for bad in (0.0, 1.0, (0.5, 0.1), (0.1, 0.2, 0.3)):
        with pytest.raises(ValueError, match="mask_frac must"):
            check_mask_fraction(bad)
    assert check_mask_fractions([0.1, 0.5]) == [0.1, 0.5]
    with pytest.raises(ValueError, match="mask fractions must lie in"):
        check_mask_fractions([0.1, 1.5])
    with pytest.raises(ValueError, match="mask_frac is empty"):
        check_mask_fractions([])
