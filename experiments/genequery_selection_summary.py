"""Three-seed means of the ``--precision bf16`` selection runs (issue 19's cost rule).

Reads ``experiments/results/genequery_selection_bf16_seed{0,10,20}.txt`` (written by
``genequery_selection.py --precision bf16 --seed S --suffix _bf16_seedS``) and, for the float32
reference, ``genequery_selection_identity0{,_seed10,_seed20}.txt``; writes
``experiments/results/genequery_selection_bf16_summary.txt``: per configuration and variant, the score
of each seed that ran and their mean (the rule reads the mean over the seeds 0, 10, 20).

The training-size run (``--train`` with two patient-C sections, files
``genequery_selection_bf16_train<pair>_seed<S>.txt``) is summarised below them: per pair and seed, the
default (7 epochs) against the steps rule (the epochs of as many optimisation steps as 7 epochs of the
three sections), and their means over the pairs that ran both.

``python experiments/genequery_selection_summary.py``
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
ROW = re.compile(r"^  GeneQuery (?P<name>.+?)\s+B4 .*\| score (?P<score>-?\d\.\d+)")
RUNS = {
    "bfloat16 features": {s: RES / f"genequery_selection_bf16_seed{s}.txt" for s in (0, 10, 20)},
    "float32 features": {
        0: RES / "genequery_selection_identity0.txt",
        10: RES / "genequery_selection_identity0_seed10.txt",
        20: RES / "genequery_selection_identity0_seed20.txt",
    },
}
#: the configurations of the cost rule (the float32 runs' default row is the gene_identity=0 candidate)
ALIASES = {
    "gene, defaults (the package defaults at run time)": "gene, 12 epochs",
    "gene, gene_identity=0": "gene, 12 epochs",
}


def scores(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        name = m["name"].strip()
        for old, new in ALIASES.items():
            if name == old or name.startswith(old + ","):
                name = new + name[len(old) :]
        out.setdefault(name, float(m["score"]))  # rows first, the ranking repeats them
    return out


def main() -> None:
    lines = [
        "# genequery_selection_summary.py: three-seed means of the selection scores (mean over B4 and",
        "# patient A of the HEG/HVG/ALL means);",
        "# rows: 3 networks, mean of the 8 views' predictions unless a variant says otherwise;",
        "# 'mean-view features' = tta='features' (one pass per network on the mean of the views' features)",
    ]
    for label, files in RUNS.items():
        table: dict[str, dict[int, float]] = defaultdict(dict)
        for seed, path in files.items():
            if path.exists():
                for name, score in scores(path).items():
                    if (
                        name.startswith("gene, 12 epochs")
                        or name.startswith("gene, 7 epochs")
                        or name.startswith("gene, 10 epochs")
                    ):
                        table[name][seed] = score
        lines.append(f"\n{label}:")
        for name, by_seed in sorted(table.items(), key=lambda kv: -sum(kv[1].values()) / len(kv[1])):
            seeds = " ".join(f"s{s} {v:.3f}" for s, v in sorted(by_seed.items()))
            mean = sum(by_seed.values()) / len(by_seed)
            lines.append(f"  {mean:.4f}  ({len(by_seed)} seed(s): {seeds})  {name}")
    lines += training_size()
    text = "\n".join(lines) + "\n"
    (RES / "genequery_selection_bf16_summary.txt").write_text(text)
    print(text)


def training_size() -> list[str]:
    """The fifth run: 7 epochs against the steps rule on two training sections (rule in the script)."""
    seven, steps = (
        "gene, 7 epochs, mean-view features",
        "gene, steps of 7 epochs on C2-C4, mean-view features",
    )
    lines = [
        "\ntraining on two patient-C sections (bfloat16 features, 3 networks, mean-view features); score of",
        "7 epochs (the default) and of the steps rule (7 epochs of C2-C4 in steps: 10-11 epochs here):",
    ]
    pairs = []
    for path in sorted(RES.glob("genequery_selection_bf16_train*_seed*.txt")):
        m = re.search(r"_train(\w{4})_seed(\d+)", path.name)
        assert m is not None
        got = scores(path)
        a, b = got.get(seven), got.get(steps)
        fmt = lambda v: "not run" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"  train {m[1][:2]}+{m[1][2:]}, seed {m[2]:>2}: 7 epochs {fmt(a)}, steps rule {fmt(b)}")
        if a is not None and b is not None:
            pairs.append((a, b))
    if pairs:
        a = sum(p[0] for p in pairs) / len(pairs)
        b = sum(p[1] for p in pairs) / len(pairs)
        lines.append(
            f"  mean over the {len(pairs)} runs with both: 7 epochs {a:.4f}, steps rule {b:.4f} "
            f"({b - a:+.4f}); winner by the rule: {'steps rule' if b > a else '7 epochs'}"
        )
    return lines


if __name__ == "__main__":
    main()
