"""Patch extraction and image-feature throughput on CPU, against a naive PIL crop-per-spot loop.

Data: the four her2st sections with full-resolution H&E (B4, C2, C3, C4; ~9.3k x 9.9k px JPEGs,
spot diameter ~145 px) from ../shared/data/her2st_raw, plus a 5,000-spot collection made by repeating
C2's spots with small jitter (the size of a Visium slide).

* extraction: ``sp.pp.extract_patches`` (memory and disk store) vs the naive loop a user writes
  (``Image.open(...).convert("RGB")`` once per slide, then ``img.crop(box).resize((224, 224))`` and
  ``np.asarray`` per spot,
  ``np.stack`` at the end); the outputs are checked to be identical.
* features: the default encoder (EfficientNet-Lite0, ImageNet weights, with stage statistics) on 224 px
  patches, batched (``models.image.encode_patches``, used by ``sp.pp.image_features``) with
  ``sp.settings.reuse_heap`` on and off, against the plain module in batches of 8 and one patch per
  forward pass; and the 8 dihedral views per patch. Every measurement runs in a fresh subprocess so that
  peak RSS is its own.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_features.py`` (writes results/features.txt).
"""

from __future__ import annotations

import copy
import os
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import HER2ST, Report, machine_info

import spared_tools as sp
from spared_tools.models.image import encode_patches, load_image_encoder
from spared_tools.pp._patches import _allow_large_images

SECTIONS = ["B4", "C2", "C3", "C4"]
REPEATS = 3  # interleaved runs of each image-feature path per thread count
MPP = 0.6880980175902472  # µm per full-resolution pixel (her2st README)
SPOT_DIAMETER = 100.0 / MPP
SIZE = 224


def section_adata(section: str) -> ad.AnnData:
    spots = pd.read_csv(HER2ST / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
    obs = pd.DataFrame(
        {"slide_id": section, "array_col": spots["x"].to_numpy(), "array_row": spots["y"].to_numpy()},
        index=[f"{section}_{x}x{y}" for x, y in zip(spots["x"], spots["y"], strict=True)],
    )
    a = ad.AnnData(np.zeros((len(obs), 1), dtype=np.float32), obs=obs)
    a.obsm["spatial"] = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    a.uns["spatial"] = {
        section: {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": SPOT_DIAMETER, "microns_per_pixel": MPP},
            "metadata": {"fullres_path": str(HER2ST / "ST-imgs" / f"{section}.jpg")},
        }
    }
    return a


def collection() -> ad.AnnData:
    parts = [section_adata(s) for s in SECTIONS]
    a = ad.concat(parts)
    a.uns["spatial"] = {s: p.uns["spatial"][s] for s, p in zip(SECTIONS, parts, strict=True)}
    return a


def naive(adata: ad.AnnData) -> np.ndarray:
    out = []
    for lib in pd.unique(adata.obs["slide_id"]):
        entry = adata.uns["spatial"][lib]
        with _allow_large_images():
            img = Image.open(entry["metadata"]["fullres_path"]).convert("RGB")
        side = int(np.round(entry["scalefactors"]["spot_diameter_fullres"]))
        idx = np.flatnonzero((adata.obs["slide_id"] == lib).to_numpy())
        for x, y in adata.obsm["spatial"][idx]:
            x0, y0 = int(np.round(x)) - side // 2, int(np.round(y)) - side // 2
            crop = img.crop((x0, y0, x0 + side, y0 + side))  # PIL pads outside with black, ours with white
            out.append(np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
    return np.stack(out)


def crop_inside(adata: ad.AnnData) -> np.ndarray:
    out = np.zeros(adata.n_obs, dtype=bool)
    for lib in pd.unique(adata.obs["slide_id"]):
        entry = adata.uns["spatial"][lib]
        with _allow_large_images(), Image.open(entry["metadata"]["fullres_path"]) as img:
            w, h = img.size
        side = int(np.round(entry["scalefactors"]["spot_diameter_fullres"]))
        idx = np.flatnonzero((adata.obs["slide_id"] == lib).to_numpy())
        xy = np.round(adata.obsm["spatial"][idx]).astype(int) - side // 2
        out[idx] = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] + side <= w) & (xy[:, 1] + side <= h)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    return float("nan")


def big_adata(n: int = 5000) -> ad.AnnData:
    """``n`` spots on C2: its spots repeated with 20 px jitter (the size of a Visium slide)."""
    c2 = section_adata("C2")
    reps = int(np.ceil(n / c2.n_obs))
    rng = np.random.default_rng(0)
    big = ad.concat([c2] * reps, index_unique="-")[:n].copy()
    big.obsm["spatial"] = big.obsm["spatial"] + rng.normal(scale=20.0, size=big.obsm["spatial"].shape)
    big.uns["spatial"] = c2.uns["spatial"]
    return big


def run_case(case: str, data: str) -> None:
    """Child process: one measurement, printed as JSON (peak RSS is per process)."""
    import hashlib
    import json

    sp.settings.progress = False
    sp.settings.verbosity = 1
    a = collection() if data == "her2st" else big_adata()
    tmp = Path(__file__).parent / "results" / f"_bench_{case}_{data}.npy"
    base = current_rss_mb()
    t0 = time.perf_counter()
    if case == "naive":
        P = naive(a)
    elif case == "memory":
        sp.pp.extract_patches(a, size=SIZE)
        P = a.obsm["patches"]
    else:
        sp.pp.extract_patches(a, size=SIZE, store="disk", path=tmp)
        P = np.load(tmp, mmap_mode="r")
    dt = time.perf_counter() - t0
    peak = rss_mb()
    inside = crop_inside(a)
    digest = hashlib.sha1(np.ascontiguousarray(P[inside]).tobytes()).hexdigest()
    tmp.unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "n": a.n_obs,
                "time": dt,
                "peak": peak,
                "base": base,
                "inside": int(inside.sum()),
                "sha1": digest,
            }
        )
    )


def _previous_fused(self):
    """The fused copy as it was until 2026-12-07: pads as separate zero-padded copies, ReLU6 out of place."""
    from torch import nn

    out = _LEAN_FUSED(self)
    net = out.net
    net._swish = nn.ReLU6()
    for block, orig in zip(net._blocks, self.net._blocks, strict=True):
        block._swish = nn.ReLU6()
        conv = block._depthwise_conv
        if type(conv) is nn.Conv2d:  # padded inside: back to the package's padded module, same weights
            old = copy.deepcopy(orig._depthwise_conv)
            old.weight, old.bias = conv.weight, conv.bias
            block._depthwise_conv = old
    return out


_LEAN_FUSED = None


def run_features(threads: int | None, heap: bool, previous: bool = False) -> None:
    """One child's feature measurements; the plain-module ones first (glibc's own malloc thresholds)."""
    import hashlib
    import json

    if previous:  # the encode path before 2026-12-07, to time against in the same run
        global _LEAN_FUSED
        from spared_tools.models._efficientnet import EfficientNetFeatures

        _LEAN_FUSED = EfficientNetFeatures.fused
        EfficientNetFeatures.fused = _previous_fused
    if threads:
        torch.set_num_threads(threads)
    sp.settings.progress = False
    sp.settings.verbosity = 1
    sp.settings.reuse_heap = heap
    a = section_adata("C2")
    sp.pp.extract_patches(a, size=SIZE)
    P = a.obsm["patches"]
    m = min(128, len(P))
    sub = np.ascontiguousarray(P[:m])
    # what a user writes: the plain module (batch norms unfolded, default memory format), in batches of
    # 8 and one patch per call, before any encode_patches call could change malloc's thresholds
    plain = load_image_encoder().eval()
    x = torch.from_numpy(sub).permute(0, 3, 1, 2)
    with torch.no_grad():
        plain(x[:8])  # warm-up
        t0 = time.perf_counter()
        for s in range(0, m, 8):
            plain(x[s : s + 8])
        t_plain8 = time.perf_counter() - t0
        k = 16
        t0 = time.perf_counter()
        for i in range(k):
            plain(x[i : i + 1])
        t_single = (time.perf_counter() - t0) / k
    enc = load_image_encoder()  # the package default ("efficientnet-lite0-stages")
    encode_patches(sub[:8], enc, batch_size=8)  # warm-up
    base = current_rss_mb()
    t0 = time.perf_counter()
    encode_patches(sub, enc)  # default: 8 per forward on CPU, fused batch norms, channels-last
    t_batched = time.perf_counter() - t0
    peak_default = rss_mb()  # before the batch-64 call below, whose activations are 8x larger
    t0 = time.perf_counter()
    encode_patches(sub, enc, batch_size=64)
    t_b64 = time.perf_counter() - t0
    v = 16  # the 8 dihedral views of 16 patches, as GeneQuery's training reads them: 128 forward passes
    t0 = time.perf_counter()
    views = encode_patches(sub[:v], enc, all_views=True)
    t_views = time.perf_counter() - t0
    sha = hashlib.sha1(views.tobytes()).hexdigest()  # compared between the paths: the same features?
    print(
        json.dumps(
            {
                "m": m,
                "sha": sha,
                "batched": m / t_batched,
                "b64": m / t_b64,
                "views": 8 * v / t_views,
                "plain8": m / t_plain8,
                "single": 1 / t_single,
                "peak": rss_mb(),
                "peak_default": peak_default,
                "base": base,
            }
        )
    )


def child(args: list[str]) -> dict:
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rep = Report("features")
    rep("# bench_features: patch extraction and image features on CPU")
    rep(machine_info())
    rep(
        f"torch threads: {torch.get_num_threads()}; date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    rep(f"load average at start (1/5/15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rep(
        "Each measurement runs in a fresh process; peak = that process's max RSS, base = RSS just before the call"
    )
    rep(
        "(after imports and building the AnnData). The machine's 2 cores are shared with other jobs: timings are noisy."
    )
    for data, label in (
        (
            "her2st",
            "840 spots over the 4 full-resolution her2st JPEGs (B4, C2, C3, C4; ~9.3k x 9.9k px each)",
        ),
        ("big", "5,000 spots on C2 (its spots repeated with jitter: one Visium-sized slide)"),
    ):
        rep(f"\n## Extraction, {SIZE} px patches: {label}")
        res = {case: child(["--case", case, "--data", data]) for case in ("naive", "memory", "disk")}
        n = res["naive"]["n"]
        for case, name in (
            ("naive", "naive PIL crop-per-spot loop"),
            ("memory", "extract_patches store=memory"),
            ("disk", "extract_patches store=disk  "),
        ):
            r = res[case]
            rep(
                f"{name}: {r['time']:7.2f} s  {n / r['time']:7.1f} patches/s  "
                f"peak RSS {r['peak']:7.0f} MiB (+{r['peak'] - r['base']:.0f} over base)"
            )
        rep(
            f"time ratio naive/ours(memory) = {res['naive']['time'] / res['memory']['time']:.2f}x; "
            f"extra-RSS ratio naive/ours(disk) = "
            f"{(res['naive']['peak'] - res['naive']['base']) / max(res['disk']['peak'] - res['disk']['base'], 1):.2f}x"
        )
        same = res["naive"]["sha1"] == res["memory"]["sha1"] == res["disk"]["sha1"]
        rep(
            f"identical patches (naive, memory, disk) over the {res['naive']['inside']} crops fully inside the image: {same}"
        )
    rep(
        f"(5,000 patches of {SIZE} px are {5000 * SIZE * SIZE * 3 / 2**20:.0f} MiB: the disk store keeps RAM at one decoded slide)"
    )

    rep(
        "\n## Image features: the default encoder (EfficientNet-Lite0, ImageNet weights, last layer + stage"
        " statistics: 2,768 features), 224 px patches of C2, CPU"
    )
    rep(
        "heap reuse = sp.settings.reuse_heap (default on): encode_patches keeps freed activations in the heap"
        " between batches; 'off' is glibc's default (blocks over its threshold unmapped when freed and faulted in"
        " again by the next batch). Each row of a block runs in one fresh process; the plain-module rows run"
        " before any encode_patches call, so with glibc's own thresholds."
    )
    for threads in (1, 2):
        # the three paths interleaved, REPEATS times: page-fault costs vary between processes and runs
        runs: dict[str, list[dict]] = {"on": [], "off": [], "prev": []}
        for _ in range(REPEATS):
            for key, extra in (("on", ["--heap", "on"]), ("prev", ["--heap", "off", "--previous"])):
                runs[key].append(child(["--case", "features", "--threads", str(threads), *extra]))
            runs["off"].append(child(["--case", "features", "--threads", str(threads), "--heap", "off"]))
        same = len({r["sha"] for h in runs for r in runs[h]}) == 1
        on, off, prev = (
            {k: float(np.mean([r[k] for r in runs[h]])) for k in runs[h][0] if k != "sha"} for h in runs
        )
        ratios = ", ".join(
            f"{a['batched'] / b['batched']:.2f}x" for a, b in zip(runs["on"], runs["prev"], strict=True)
        )
        rep(f"torch threads = {threads} (means of {REPEATS} interleaved runs):")
        rep(
            f"  encode_patches (default 8), heap reuse on : {on['batched']:7.1f} patches/s"
            f"   (on/off = {on['batched'] / off['batched']:.2f}x)"
        )
        rep(f"  encode_patches (default 8), heap reuse off: {off['batched']:7.1f} patches/s")
        rep(
            f"  the same before 2026-12-07 (pads copied, ReLU6 out of place, heap reuse off): "
            f"{prev['batched']:.1f} patches/s; 8 views {prev['views']:.1f} patches/s"
            f"   (now/before = {on['batched'] / prev['batched']:.2f}x, 8 views {on['views'] / prev['views']:.2f}x;"
            f" per run {ratios})"
        )
        rep(f"  the 8 views' features of 16 patches bit-identical over every run of the three paths: {same}")
        rep(f"  encode_patches (64), on / off             : {on['b64']:7.1f} / {off['b64']:.1f} patches/s")
        rep(
            f"  8 views per patch (all_views), on / off   : {on['views']:7.1f} / {off['views']:.1f} patches/s"
            f"   (on/off = {on['views'] / off['views']:.2f}x)"
        )
        plain8 = (on["plain8"] + off["plain8"]) / 2
        single = (on["single"] + off["single"]) / 2
        rep(
            f"  plain module, batches of 8                : {plain8:7.1f} patches/s   "
            f"(ours/plain = {on['batched'] / plain8:.2f}x)"
        )
        rep(
            f"  plain module, 1 per call                  : {single:7.1f} patches/s   "
            f"(ours/plain = {on['batched'] / single:.2f}x)"
        )
        rep(
            f"  peak RSS after the default call, heap reuse on / off: {on['peak_default']:.0f} / "
            f"{off['peak_default']:.0f} MiB; after all calls (batch 64 included): {on['peak']:.0f} / "
            f"{off['peak']:.0f} MiB (base {on['base']:.0f})"
        )
        rep(
            f"  extrapolated (heap reuse on): 840 her2st spots in {840 / on['batched']:.0f} s; 5,000 in "
            f"{5000 / on['batched']:.0f} s; with the 8 views {8 * 5000 / on['views']:.0f} s"
        )
    rep(f"load average at end (1/5/15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rep(f"written to {rep.save().relative_to(Path(__file__).resolve().parents[1])}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["naive", "memory", "disk", "features"])
    ap.add_argument("--data", choices=["her2st", "big"], default="her2st")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--heap", choices=["on", "off"], default="on")
    ap.add_argument("--previous", action="store_true", help="time the encode path before 2026-12-07")
    ns = ap.parse_args()
    if ns.case == "features":
        run_features(ns.threads or None, ns.heap == "on", ns.previous)
    elif ns.case:
        run_case(ns.case, ns.data)
    else:
        main()
