"""Build the compact gene-length tables shipped in ``src/spared_tools/_data``.

For every gene of a GENCODE "basic" GTF, the length is the size of the **union of all its exons**
(overlapping and adjacent exon intervals of all transcripts merged, then summed; GTF coordinates are
1-based and inclusive). This is the ``merged`` length of gtftools that the SpaRED library uses for TPM.

Usage::

    python scripts/build_gene_lengths.py ../shared/data/gene_annotations src/spared_tools/_data

writes ``gene_lengths_human.tsv.gz`` (GENCODE v43) and ``gene_lengths_mouse.tsv.gz`` (GENCODE vM33) with
the tab-separated columns ``gene_id`` (Ensembl id without version suffix), ``gene_name``, ``gene_type``,
``chrom`` and ``length``. Genes on the Y pseudo-autosomal region (``_PAR_Y`` ids, identical in structure
to their X copies) are skipped, so every unversioned Ensembl id appears once. The gzip stream is written
with ``mtime=0`` so that rebuilding from the same GTF gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import sys
from pathlib import Path

GTFS = {
    "human": "gencode.v43.basic.annotation.gtf.gz",
    "mouse": "gencode.vM33.basic.annotation.gtf.gz",
}
_ATTR = re.compile(r'(\w+) "([^"]*)"')


def union_length(intervals: list[tuple[int, int]]) -> int:
    """Total length of the union of 1-based inclusive ``(start, end)`` intervals."""
    total = 0
    cur_s, cur_e = None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e + 1:
            if cur_e is not None:
                total += cur_e - cur_s + 1
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s + 1
    return total


def read_gtf_exons(path: Path) -> tuple[dict[str, list[tuple[int, int]]], dict[str, tuple[str, str, str]]]:
    """Exon intervals and (name, type, chromosome) per versioned gene id, in file order."""
    exons: dict[str, list[tuple[int, int]]] = {}
    info: dict[str, tuple[str, str, str]] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 9:
                continue
            feature = fields[2]
            if feature not in ("gene", "exon"):
                continue
            attrs = dict(_ATTR.findall(fields[8]))
            gid = attrs["gene_id"]
            if feature == "gene":
                info[gid] = (attrs.get("gene_name", ""), attrs.get("gene_type", ""), fields[0])
                exons.setdefault(gid, [])
            else:
                exons.setdefault(gid, []).append((int(fields[3]), int(fields[4])))
    return exons, info


def build_table(gtf: Path) -> list[tuple[str, str, str, str, int]]:
    exons, info = read_gtf_exons(gtf)
    rows = []
    for gid, ivs in exons.items():
        if gid.endswith("_PAR_Y") or not ivs:
            continue
        name, gtype, chrom = info.get(gid, ("", "", ""))
        rows.append((gid.split(".")[0], name, gtype, chrom, union_length(ivs)))
    return rows


def write_table(rows, out: Path) -> None:
    buf = io.StringIO()
    buf.write("gene_id\tgene_name\tgene_type\tchrom\tlength\n")
    for r in rows:
        buf.write("\t".join(map(str, r)) + "\n")
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue().encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotation_dir", type=Path, help="folder with the GENCODE basic GTFs")
    parser.add_argument("out_dir", type=Path, help="where to write gene_lengths_{human,mouse}.tsv.gz")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for organism, fname in GTFS.items():
        gtf = args.annotation_dir / fname
        if not gtf.exists():
            print(f"missing {gtf}", file=sys.stderr)
            return 1
        rows = build_table(gtf)
        out = args.out_dir / f"gene_lengths_{organism}.tsv.gz"
        write_table(rows, out)
        print(f"{organism}: {len(rows)} genes -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
