"""``reuse_heap``: freed large blocks are reused (no fresh page faults) and the thresholds are restored."""

from __future__ import annotations

import resource

import pytest

import spared_tools as sp
from spared_tools import _heap

pytestmark = pytest.mark.skipif(_heap._glibc() is None, reason="glibc only")

MB = 1 << 20


def _faults_per_block(nbytes: int, n: int = 5) -> list[int]:
    """Minor page faults while allocating, writing and freeing a block of ``nbytes``, ``n`` times in a row."""
    import torch  # (numpy asks for huge pages on large arrays; torch, like glibc, does not)

    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        b = torch.empty(nbytes, dtype=torch.uint8)
        b.fill_(1)
        del b
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out


def test_large_blocks_are_reused_inside() -> None:
    nbytes = 96 * MB  # above glibc's largest dynamic mmap threshold (32 MiB): always mmap'd outside
    pages = nbytes // 4096
    with _heap.reuse_heap(True) as on:
        assert on
        inside = _faults_per_block(nbytes)
    outside = _faults_per_block(nbytes)
    # the heap has to grow once or twice first (where brk can extend it is up to the address layout);
    # after that the same memory is handed out again
    assert min(inside[2:]) < pages // 20, (inside, pages)
    if (
        min(outside) < pages // 2
    ):  # transparent huge pages for every mapping ("always"): faults are few anyway
        pytest.skip(f"this kernel backs fresh mappings with huge pages ({outside} faults for {pages} pages)")
    assert min(outside) > pages // 2, outside


def test_setting_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append(("mallopt", param, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("trim", pad, 0))
            return 1

    monkeypatch.setattr(_heap, "_glibc", lambda: FakeLibc())
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
