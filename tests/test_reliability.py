"""Reliability checks that belong to no single module: benchmark outputs are written atomically."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_results_written_atomically(tmp_path, monkeypatch):
    common = _common()
    target = tmp_path / "results" / "x.txt"
    common.write_text_atomic(target, "good result\n")
    assert target.read_text() == "good result\n"

    # a failure while the text is being written leaves the previous result, and no temporary file
    class Interrupted(Exception):
        pass

    real_write = Path.write_text

    def half_then_crash(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(Path, "write_text", half_then_crash)
    with pytest.raises(Interrupted):
        common.write_text_atomic(target, "a new and much longer result\n")
    monkeypatch.undo()
    assert target.read_text() == "good result\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]

    # Report.save goes through the same helper
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    rep = common.Report("r")
    rep("line 1")
    rep("line 2")
    assert rep.save().read_text() == "line 1\nline 2\n"


def test_killed_benchmark_leaves_the_previous_result(tmp_path):
    """A process killed mid-write (SIGKILL, no clean-up at all) never leaves a truncated result."""
    target = tmp_path / "result.txt"
    target.write_text("previous complete result\n")
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from pathlib import Path
import spared_tools._atomic as A
with A.atomic_path({str(target)!r}) as tmp:
    with open(tmp, "w") as fh:
        fh.write("partial")
        fh.flush()
        print("writing", flush=True)
        time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "previous complete result\n"


def test_pipeline_refuses_duplicate_var_names_at_entry():
    import anndata as ad
    import numpy as np
    import pandas as pd

    import spared_tools as sp

    rng = np.random.default_rng(0)
    obs = pd.DataFrame(
        {
            "slide_id": pd.Categorical(["S0"] * 9),
            "array_row": np.repeat(np.arange(3), 3),
            "array_col": np.tile(np.arange(3), 3),
        },
        index=[f"s{i}" for i in range(9)],
    )
    a = ad.AnnData(rng.poisson(5, (9, 3)).astype(np.float32), obs=obs)
    a.var_names = ["GAPDH", "ACTB", "GAPDH"]
    with pytest.raises(
        ValueError, match=r"adata.var_names has 1 duplicated gene name\(s\) \(2 genes\): 'GAPDH' ×2"
    ):
        sp.pp.spared_pipeline(a, organism="human")
