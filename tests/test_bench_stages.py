"""The stage tables of ``benchmarks/bench_genequery.py`` and ``experiments/genequery_ablations.py``.

Each committed result file starts with the command that wrote it (``# <script> <stage> <options>``);
parsed with today's option parser, the stage table must name that very file. This pins the output
names that the old chain of ``if`` rules produced, and that every moved ablation still parses.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scripts(monkeypatch_module):
    monkeypatch_module.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch_module.syspath_prepend(str(ROOT / "experiments"))
    import bench_genequery
    import genequery_ablations

    return bench_genequery, genequery_ablations


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
    for name in ("bench_genequery", "genequery_ablations", "_common"):
        sys.modules.pop(name, None)


def _cases():
    # genequery_ensemble.txt was written by the ensemble stage's earlier form (--n-seeds), see its docstring
    old_options = {"genequery_ensemble.txt"}
    for folder in ("benchmarks", "experiments"):
        for path in sorted((ROOT / folder / "results").glob("genequery_*.txt")):
            script = path.read_text().split(maxsplit=2)[1:2]  # the selection runs have their own scripts
            if path.name not in old_options and script[0].removesuffix(":") not in OWN_SCRIPTS:
                yield pytest.param(folder, path, id=f"{folder}/{path.name}")


#: experiments whose results their own script writes (not a stage of bench_genequery / genequery_ablations)
OWN_SCRIPTS = (
    "genequery_selection.py",
    "genequery_selection_summary.py",
    "genequery_blend.py",
    "genequery_head_rings.py",
    "genequery_context_rings.py",
    "genequery_slide_norm.py",
    "genequery_layers_probe.py",
    "genequery_layers.py",
    "genequery_head_stages.py",
    "genequery_head_stages_spot.py",
    "genequery_unseen_context.py",
    "genequery_max_len.py",
    "genequery_head_views.py",
    "genequery_head_views_spot.py",
    "genequery_head_alpha.py",
)


def test_results_of_own_scripts_name_a_committed_script_and_its_output():
    seen = set()
    for path in sorted((ROOT / "experiments" / "results").glob("genequery_*.txt")):
        script = path.read_text().split(maxsplit=2)[1].removesuffix(":")
        if script in OWN_SCRIPTS:
            seen.add(script)
            assert (ROOT / "experiments" / script).is_file(), path.name
            # each writes results/<its stem>[_suffix].txt; the summary writes <the runs' name>_summary.txt
            stem = "genequery_selection" if script == "genequery_selection_summary.py" else Path(script).stem
            assert path.stem.startswith(stem), (path.name, script)
    assert {
        "genequery_blend.py",
        "genequery_head_rings.py",
        "genequery_context_rings.py",
        "genequery_layers_probe.py",
        "genequery_layers.py",
        "genequery_head_stages.py",
        "genequery_head_stages_spot.py",
        "genequery_unseen_context.py",
        "genequery_max_len.py",
        "genequery_head_views.py",
        "genequery_head_views_spot.py",
        "genequery_head_alpha.py",
    } <= seen


@pytest.mark.parametrize(("folder", "path"), list(_cases()))
def test_stage_table_names_every_committed_result(scripts, folder, path):
    bench, ablations = scripts
    stages, parser = (
        (bench.STAGES, bench.parser(bench.STAGES))
        if folder == "benchmarks"
        else (ablations.STAGES, ablations.experiment_parser())
    )
    command = shlex.split(path.read_text().splitlines()[0].removeprefix("#").strip())
    assert command[0] in ("bench_genequery.py", "genequery_ablations.py")
    args = parser.parse_args(command[1:])
    stage = stages[args.stage]
    if args.scaling is None:
        args.scaling = stage.scaling
    assert bench.output_name(stage, args) + ".txt" == path.name


def test_ablations_moved_out_of_the_benchmark(scripts):
    bench, ablations = scripts
    assert set(bench.STAGES) == {"prep", "main", "speed", "heldout", "heldout_unseen", "cost"}
    assert not set(bench.STAGES) & set(ablations.STAGES)
    moved = {"unseen", "ensemble", "identity", "context", "dropout", "precision", "finetune", "rank", "floor"}
    assert moved <= set(ablations.STAGES)
    assert ablations.RESULTS == ROOT / "experiments" / "results"


def test_output_name_rules(scripts):
    bench, _ = scripts
    args = bench.parser(bench.STAGES).parse_args(["main", "--width", "256", "--seed", "1", "--one-view"])
    args.scaling = "standard"
    assert bench.output_name(bench.STAGES["main"], args) == "genequery_main_one_view_standard_w256_seed1"
    assert bench.output_name(bench.STAGES["speed"], args) == "genequery_speed"
    with pytest.raises(ValueError, match="unknown suffix rules"):
        bench.output_name(bench.Stage(bench.main, "x", ("nope",)), args)
