from pathlib import Path

import pytest

from spared_tools._atomic import atomic_dir, atomic_path
from spared_tools._checks import check_choice, check_int, check_number


def test_atomic_path_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left behind
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_overwrite_false(tmp_path: Path):
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(FileExistsError, match="out.txt"), atomic_path(target, overwrite=False):
        pass
    assert target.read_text() == "good"


def test_atomic_dir(tmp_path: Path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(FileExistsError, match="overwrite=True"), atomic_dir(target):
        pass
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as d:
        (d / "a.txt").write_text("2")
        raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "1"
    with atomic_dir(target, overwrite=True) as d:
        (d / "b.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_checks():
    assert check_int(3, "n") == 3
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            check_int(bad, "n")
    assert check_int(0, "n", min=0) == 0
    assert check_int(None, "n", allow_none=True) is None
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 5\], got 6"):
        check_int(6, "k", min=1, max=5)
    assert check_number(0.5, "lr", min=0, min_inclusive=False) == 0.5
    with pytest.raises(ValueError, match=r"lr must be a finite number in \(0, inf\)"):
        check_number(0, "lr", min=0, min_inclusive=False)
    with pytest.raises(ValueError, match="finite"):
        check_number(float("nan"), "lr")
    assert check_choice("hex", "geometry", ["hex", "square"]) == "hex"
    with pytest.raises(ValueError, match="geometry must be one of 'hex', 'square'; got 'x'"):
        check_choice("x", "geometry", ["hex", "square"])
