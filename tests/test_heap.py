"""``reuse_heap``: freed large blocks are reused (no fresh page faults) and the thresholds are restored."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import spared_tools as sp
from spared_tools import _heap

pytestmark = pytest.mark.skipif(_heap._glibc() is None, reason="glibc only")

MB = 1 << 20


# Each measurement runs in a fresh interpreter: what ran before in the same process (threads, mappings
# above the heap, free chunks left in the middle of the heap) decides where a large block lands, and made
# an in-process version of this test flaky.
_PROBE = """
import json, resource, sys
import torch  # (numpy asks for huge pages on large arrays; torch, like glibc, does not)
from spared_tools import _heap

nbytes, enabled = int(sys.argv[1]), sys.argv[2] == "on"
out = []
with _heap.reuse_heap(enabled) as on:
    for _ in range(8):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        b = torch.empty(nbytes, dtype=torch.uint8)
        b.fill_(1)
        del b
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps({"on": on, "faults": out}))
"""


def _faults(nbytes: int, enabled: bool) -> list[int]:
    """Minor page faults while allocating, writing and freeing ``nbytes``, 8 times, in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _PROBE, str(nbytes), "on" if enabled else "off"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["on"] is enabled
    return list(got["faults"])


def test_large_blocks_are_reused_inside() -> None:
    nbytes = 96 * MB  # above glibc's largest dynamic mmap threshold (32 MiB): mmap'd by default
    pages = nbytes // 4096
    off = _faults(nbytes, enabled=False)
    if min(off) < pages // 2:  # transparent huge pages for every mapping ("always"): faults are few anyway
        pytest.skip(f"this kernel backs fresh mappings with huge pages ({off} faults for {pages} pages)")
    # by default every block is a fresh mapping: all its pages fault on the first write
    assert min(off) > pages // 2, off
    on = _faults(nbytes, enabled=True)
    # with reuse, the heap has to grow once or twice first (where a block lands depends on the alignment
    # padding and on what else sits at the top of the heap); after that freed memory is handed out again
    # without faulting
    assert sum(f < pages // 20 for f in on[1:]) >= 4, (on, pages)


class _FakeLibc:
    """Records ``mallopt`` / ``malloc_trim`` calls instead of making them."""

    def __init__(self, calls: list[tuple[str, int, int]]) -> None:
        self.calls = calls

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad, 0))
        return 1


def test_setting_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    monkeypatch.setattr(_heap, "_glibc", lambda: _FakeLibc(calls))
    monkeypatch.setattr(sp.settings, "reuse_heap", False)
    with _heap.reuse_heap() as on:
        assert not on
    assert calls == []
    monkeypatch.setattr(sp.settings, "reuse_heap", True)
    with _heap.reuse_heap() as outer:
        with _heap.reuse_heap() as inner:
            assert outer and inner
        # the inner exit restores nothing
        assert calls == [("mallopt", -3, 1 << 30), ("mallopt", -1, 1 << 30)]
    assert calls[2:] == [("mallopt", -1, 64 * MB), ("mallopt", -3, 32 * MB), ("trim", 0, 0)]
    with pytest.raises(RuntimeError), _heap.reuse_heap():  # restored on errors too
        raise RuntimeError("boom")
    assert calls[-1] == ("trim", 0, 0) and _heap._depth == 0


def test_no_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_heap, "_glibc", lambda: None)
    with _heap.reuse_heap(True) as on:
        assert not on


def test_image_features_run_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode_patches (image features for every model and ``sp.pp.image_features``) reuses the heap."""
    import numpy as np
    import torch
    from torch import nn

    from spared_tools.models.image import encode_patches, load_image_encoder

    calls: list[tuple[str, int, int]] = []
    depth_seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            depth_seen.append(_heap._depth)
            return x.mean(dim=(2, 3))

    enc = load_image_encoder(Probe(), out_dim=3)
    patches = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    monkeypatch.setattr(_heap, "_glibc", lambda: _FakeLibc(calls))
    monkeypatch.setattr(sp.settings, "reuse_heap", True)
    on = encode_patches(patches, enc, batch_size=2)
    assert depth_seen == [1, 1, 1]  # every batch inside the scope
    assert calls == [
        ("mallopt", -3, 1 << 30),
        ("mallopt", -1, 1 << 30),
        ("mallopt", -1, 64 * MB),
        ("mallopt", -3, 32 * MB),
        ("trim", 0, 0),
    ]
    monkeypatch.setattr(sp.settings, "reuse_heap", False)
    off = encode_patches(patches, enc, batch_size=2)
    assert depth_seen[3:] == [0, 0, 0] and len(calls) == 5
    # the setting changes where memory comes from, never the values
    np.testing.assert_array_equal(on, off)
    ref = (
        patches.astype(np.float32) / 255.0 - enc.mean.numpy().reshape(1, 1, 1, 3)
    ) / enc.std.numpy().reshape(1, 1, 1, 3)
    np.testing.assert_allclose(on, ref.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
