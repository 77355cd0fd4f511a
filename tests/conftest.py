from __future__ import annotations

from pathlib import Path

import anndata as ad
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test cleanly when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture(scope="session")
def _her2st_c2_block():
    return ad.read_h5ad(shared_path("fixtures", "her2st_C2_block.h5ad"))


@pytest.fixture
def her2st_c2_block(_her2st_c2_block):
    """56 legacy-ST spots × 252 genes with an H&E crop (copy per test)."""
    return _her2st_c2_block.copy()


@pytest.fixture(scope="session")
def _mob1():
    return ad.read_h5ad(shared_path("fixtures", "mob1_st2k.h5ad"))


@pytest.fixture
def mob1(_mob1):
    """379 spots × 200 genes, ST 2k checkerboard array (copy per test)."""
    return _mob1.copy()


@pytest.fixture(scope="session")
def _visium_hex():
    return ad.read_h5ad(shared_path("fixtures", "visium_hex_cytassist.h5ad"))


@pytest.fixture
def visium_hex(_visium_hex):
    """400 hexagonal Visium spots × 200 genes (copy per test)."""
    return _visium_hex.copy()


@pytest.fixture
def assert_lightning_quiet(caplog, capfd):
    """``check(train)``: ``train()`` prints Lightning's info lines at verbosity 3 and none at verbosity 1."""
    import logging

    import spared_tools as sp

    def check(train) -> None:
        before = sp.settings.verbosity
        try:
            for verbosity in (3, 1):
                sp.settings.verbosity = verbosity
                caplog.clear()
                with caplog.at_level(logging.INFO):
                    train()
                out, err = capfd.readouterr()
                assert ("GPU available" in caplog.text + out + err) == (verbosity >= 3)
        finally:
            sp.settings.verbosity = before

    return check


@pytest.fixture
def spared_log(caplog):
    """caplog that also sees the package's non-propagating logger."""
    import logging

    logger = logging.getLogger("spared_tools")
    logger.propagate = True
    try:
        with caplog.at_level(logging.INFO, logger="spared_tools"):
            yield caplog
    finally:
        logger.propagate = False


@pytest.fixture
def quiet_one_thread():
    """One torch thread (bit-reproducible training), no progress bars, warnings only; restored after."""
    import torch

    import spared_tools as sp

    before = torch.get_num_threads()
    prev = (sp.settings.progress, sp.settings.verbosity)
    torch.set_num_threads(1)
    sp.settings.progress = False
    sp.settings.verbosity = 1
    yield
    torch.set_num_threads(before)
    sp.settings.progress, sp.settings.verbosity = prev
