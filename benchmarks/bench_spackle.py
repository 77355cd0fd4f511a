"""SpaCKLE completion benchmark: accuracy vs the median method (paper protocol), the reference `spared`
implementation where it can run, and CPU speed / memory.

    nice -n 10 .venv/bin/python benchmarks/bench_spackle.py --part her2st   # -> results/spackle_her2st.txt
    nice -n 10 .venv/bin/python benchmarks/bench_spackle.py --part mob
    nice -n 10 .venv/bin/python benchmarks/bench_spackle.py --part visium
    nice -n 10 .venv/bin/python benchmarks/bench_spackle.py --part speed
    nice -n 10 .venv/bin/python benchmarks/bench_spackle.py --part peer

Accuracy protocol (leakage-free): SpaRED pipeline with statistics fitted on the training split; SpaCKLE
trained on training slides with best-validation checkpoint on the validation slides; 10 random masks of
the real entries of the *test* slides; the median method re-run on the same masked data.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, Report, machine_info, peak_rss_mb

import spared_tools as sp

SWEEP = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
OLD_STEPS = 3000


def _load_avg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


#: the defaults before issue 22: a fixed 3,000 steps (best-validation checkpoint, no early stopping)
OLD_CTOR = {"d_model": 128, "n_heads": 4, "n_layers": 2, "dim_feedforward": 256, "dropout": 0.0}
OLD_TRAIN = {
    "max_steps": 3000,
    "val_check_interval": 50,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "early_stopping_patience": None,
    "batch_size": 256,
}


def _fit(adata, ctor: dict, train: dict, seed: int = 0, *, centre: bool = True):
    """SpaCKLE with these constructor / train arguments (the rest: the package defaults).

    ``centre=False`` switches the package's per-slide centring off (the old defaults had none): the
    offsets are zero in training and the model keeps no ``centre_mean``, so it completes uncentred.
    """
    import inspect

    cls = sp.tl.SpackleModel
    train = dict(train)
    if "mask" in train:
        train["mask_frac" if "mask_frac" in inspect.signature(cls.train).parameters else "mask_prob"] = (
            train.pop("mask")
        )
    if "adata" in inspect.signature(cls.__init__).parameters:  # data bound at construction (before issue 18)
        return cls(adata, seed=seed, **ctor).train(**train)
    model = cls(seed=seed, **ctor)
    if centre or not hasattr(model, "centre_mean"):
        return model.train(adata, **train)
    model._offsets = lambda values, known, slides: np.zeros_like(values)  # type: ignore[method-assign]
    model.train(adata, **train)
    del model._offsets
    model.centre_mean = None
    return model


def _accuracy(rep: Report, adata, name: str, n_masks: int, seed: int = 0, old: bool = True) -> dict:
    rep(
        f"[{name}] {adata.n_obs} spots x {adata.n_vars} genes; slides per split: "
        + ", ".join(
            f"{k}={sorted(adata.obs.loc[adata.obs['split'] == k, 'slide_id'].astype(str).unique())}"
            for k in ("train", "val", "test")
        )
    )
    rep(f"[{name}] missing entries (median pre-completed): {100 * (1 - adata.layers['mask'].mean()):.1f} %")
    runs = [("SpaCKLE defaults", {}, {})]
    saved = ROOT / "benchmarks" / "_work" / "selection_models" / f"{name}_old_sweep1"
    old = old and (OLD_STEPS > 0 or saved.exists())
    if old:
        runs.append(("old defaults at their best", OLD_CTOR, {**OLD_TRAIN, "max_steps": OLD_STEPS}))
    out: dict = {}
    for label, ctor, train in runs:
        load0 = _load_avg()
        t0 = time.perf_counter()
        if label.startswith("old") and saved.exists():
            model = sp.tl.SpackleModel.load(saved, adata)
            rep(
                f"[{name}] {label}: the old-defaults model of experiments/spackle_selection.py (old network and "
                f"optimiser, {model.train_info_['max_steps']} steps, validated every "
                f"{model.train_info_['val_check_interval']} steps, best-validation weights: the old defaults at "
                "their best training length), loaded"
            )
        else:
            if label.startswith("old"):
                rep(
                    f"[{name}] {label}: the old network and optimiser without the per-slide centring, trained "
                    f"{OLD_STEPS} steps{'' if OLD_STEPS == 3000 else ' (not 3,000: machine time)'}, "
                    f"validated every {OLD_TRAIN['val_check_interval']} steps, best-validation weights"
                )
            model = _fit(adata, ctor, train, seed=seed, centre=not label.startswith("old"))
        t_train = time.perf_counter() - t0
        info = model.train_info_
        if label == "SpaCKLE defaults":
            _timing(rep, name, adata, model, t_train, load0)
        rep(f"[{name}] {label}: {model!r}")
        rep(
            f"[{name}] {label}: trained {info['steps']} of max {info['max_steps']} steps in "
            f"{info['seconds']:.0f} s "
            f"({info['steps'] / info['seconds']:.2f} steps/s, load avg {load0}->{_load_avg()}); best val MSE "
            f"{info['best_val']['MSE']:.4f} at step {info['best_step']}"
        )
        res = sp.tl.evaluate_completion(
            adata, model=model, mask_frac=0.3, n_masks=n_masks, seed=seed, key_added=None
        )
        s = sp.tl._evaluate_completion.summarise(res)
        for _, r in s.iterrows():
            if r["method"] == "median" and "median" in out:
                continue
            rep(
                f"    {label if r['method'] == 'spackle' else 'median method':28s} MSE {r['MSE_mean']:.4f} ± "
                f"{r['MSE_std']:.4f}  MAE {r['MAE_mean']:.4f}  PCC-gene {r['PCC-gene_mean']:.4f}  "
                f"PCC-spot {r['PCC-spot_mean']:.4f}"
            )
        out["median"] = float(s.loc[s.method == "median", "MSE_mean"].iloc[0])
        out[label] = float(s.loc[s.method == "spackle", "MSE_reduction_vs_median"].iloc[0])
        out[label + " steps"] = int(info["steps"])
        out[label + " seconds"] = float(info["seconds"])
    new = out["SpaCKLE defaults"]
    line = (
        f"    => [{name}] test, 30 % of observed entries hidden, {n_masks} masks: MSE reduction vs the median "
        f"method: defaults {100 * new:.1f} % ({out['SpaCKLE defaults steps']} steps, "
        f"{out['SpaCKLE defaults seconds']:.0f} s)"
    )
    if old:
        o = out["old defaults at their best"]
        line += (
            f"; old defaults {100 * o:.1f} % ({out['old defaults at their best steps']} steps, "
            f"{out['old defaults at their best seconds']:.0f} s); defaults - old = {100 * (new - o):+.1f} points"
        )
    rep(line + "; target >= 82.5 % (paper, averaged over SpaRED) and >= old - 1 point")
    rep()
    return out


def _timing(rep: Report, name: str, adata, model, t_train: float, load0: str) -> None:
    """Training + completion wall and CPU time and peak RSS of the defaults run (this process)."""
    import resource

    import torch

    t0 = time.perf_counter()
    model.complete(adata)
    t_done = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    rep(
        f"[{name}] defaults: training {t_train:.0f} s + completion of all {adata.n_obs} spots {t_done:.1f} s = "
        f"{t_train + t_done:.0f} s wall on {torch.get_num_threads()} torch threads under load avg "
        f"{load0}->{_load_avg()} (2 cores shared); process CPU time so far {cpu:.0f} s (incl. reading the data); "
        f"peak RSS {ru.ru_maxrss / 1024**2:.2f} GiB (whole process; target <= 4 GiB)"
    )


def _load_set(name: str):
    """The processed set cached by experiments/spackle_selection.py (same split and pipeline), else built."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sel", ROOT / "experiments" / "spackle_selection.py")
    sel = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(sel)  # type: ignore[union-attr]
    return sel.load_set(name)


def part_her2st(rep: Report, steps: int) -> None:
    rep("[her2st] 28 sections, SpaRED pipeline; split by patient: train A-D, validation E, test F")
    _accuracy(rep, _load_set("her2st"), "her2st", n_masks=5)


def part_mob(rep: Report, steps: int) -> None:
    rep("[mob] STUtility mouse olfactory bulb (ST 2k checkerboard): train MOB1+MOB2, val MOB3, test MOB4")
    _accuracy(rep, _load_set("mob"), "mob", n_masks=5)


def part_paste(rep: Report, steps: int) -> None:
    rep("[paste] PASTE breast-cancer layers (ST 1k): train slice1+slice2, val slice3, test slice4")
    _accuracy(rep, _load_set("paste"), "paste", n_masks=5)


def part_visium(rep: Report, steps: int) -> None:
    rep(
        "[visium] 10x Visium CytAssist mouse section (one slide): split into column bands, left 60 % train, "
        "next 20 % validation, right 20 % test (neighbourhoods cut at band borders)"
    )
    _accuracy(rep, _load_set("visium"), "visium", n_masks=5)


def _synthetic(n_slides: int, n_genes: int = 128):
    from _common import read_her2st_sections, visium_collection

    src = read_her2st_sections(["A1", "B1"])
    col = visium_collection(src, n_slides=n_slides, n_genes=n_genes)
    X = col.layers["log1p"]
    col.layers["mask"] = np.asarray(X > 0)
    sp.pp.median_complete(col, layer="log1p", mask_layer="mask", key_added="median")
    return col


def part_speed(rep: Report, steps: int) -> None:
    import torch

    rep(f"[speed] torch threads {torch.get_num_threads()}, load average at start {_load_avg()}")
    for n_slides in (1, 16):
        a = _synthetic(n_slides)
        a.obs["split"] = "train"
        n = a.n_obs
        model = sp.tl.SpackleModel(seed=0)
        # steps/s: a short training run, every spot training, no validation => pure training steps
        t0 = time.perf_counter()
        model.train(a, max_steps=steps, batch_size=256, split_key="split")
        dt = time.perf_counter() - t0
        rep(
            f"[speed] {n} spots x 128 genes: training {steps} steps (batch 256, {len(model.ring) - 1} neighbours) "
            f"in {dt:.1f} s = {steps / dt:.2f} steps/s (including Lightning start-up)"
        )
        t0 = time.perf_counter()
        out = model.complete(a)
        dt = time.perf_counter() - t0
        n_need = int((~a.layers["mask"].all(1)).sum())
        rep(
            f"[speed] {n} spots x 128 genes: completion in {dt:.2f} s = {n / dt:.0f} spots/s "
            f"({n_need} spots had missing entries); load avg {_load_avg()}"
        )
        assert out.shape == a.shape
        if n_slides == 16:
            model.save(ROOT / "benchmarks" / "_work" / "spackle_speed_model", overwrite=True)
            a.write_h5ad(ROOT / "benchmarks" / "_work" / "spackle_80k.h5ad")
    _fresh_completion(rep)


class _StepClock:
    """Lightning callback: wall time between consecutive training-batch ends (data + step + loop overhead)."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def on_train_batch_end(self, *args) -> None:
        self.t.append(time.perf_counter())


def part_steptime(rep: Report, steps: int) -> None:
    """Training step of the package (Lightning runner) vs a plain-torch loop: same network, data, batch."""
    import copy

    import pytorch_lightning as pl
    import torch

    from spared_tools._kernels.masking import hide_entries_torch
    from spared_tools.models.spackle import IndexDataset, NeighbourhoodCollate
    from spared_tools.tl._spackle_data import _neighbourhoods

    a = _load_set("her2st")
    rep(
        f"[steptime] her2st {a.n_obs} spots x {a.n_vars} genes (train A-D); torch threads "
        f"{torch.get_num_threads()}; {steps} steps per round, median step after 5 warm-up steps"
    )
    clock_cls = type("StepClock", (_StepClock, pl.Callback), {})

    def lightning_round() -> tuple[float, object]:
        clock = clock_cls()
        model = _fit(
            a,
            {},
            {
                "max_steps": steps,
                "val_check_interval": steps,
                "early_stopping_patience": None,
                "trainer_kwargs": {"callbacks": [clock]},
            },
        )
        return float(np.median(np.diff(clock.t[4:]))), model

    def torch_round(model) -> float:
        torch.manual_seed(0)
        enc = copy.deepcopy(model.encoder).train()
        table = _neighbourhoods(a, model.n_rings, "auto", "slide_id")[0]
        values = np.asarray(a.layers["median"], dtype=np.float32)
        z = ((values - model.gene_mean) / model.gene_std).astype(np.float32)
        obs = np.asarray(a.layers["mask"], dtype=bool)
        is_train = (a.obs["split"] == "train").to_numpy()
        cut = table.copy()
        cut[(cut >= 0) & ~is_train[np.maximum(cut, 0)]] = -1
        loader = torch.utils.data.DataLoader(
            IndexDataset(np.flatnonzero(is_train)),
            batch_size=256,
            shuffle=True,
            collate_fn=NeighbourhoodCollate(z, obs, cut),
            drop_last=True,
        )
        ring = torch.as_tensor(model.ring)
        std = torch.as_tensor(model.gene_std)
        opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        t = []
        it = iter(loader)
        for _ in range(steps):
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            hidden = hide_entries_torch(b["observed"], 0.3, 0.3, gen)
            pred = enc(b["values"], b["observed"] & ~hidden, b["padding"], ring)
            err = (pred - b["values"]) * std
            w = hidden.to(err.dtype)
            loss = (err * err * w).sum() / w.sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t.append(time.perf_counter())
        return float(np.median(np.diff(t[4:])))

    ratios = []
    for r in range(2):
        load0 = _load_avg()
        t_l, model = lightning_round()
        t_t = torch_round(model)
        ratios.append(t_l / t_t)
        rep(
            f"[steptime] round {r + 1}: package (Lightning runner) {1000 * t_l:.0f} ms/step, plain torch "
            f"{1000 * t_t:.0f} ms/step => ratio {t_l / t_t:.2f} (target <= 2); load avg {load0}->{_load_avg()}"
        )
    rep(f"[steptime] => median ratio {np.median(ratios):.2f} (target <= 2)")


def part_default10k(rep: Report, steps: int) -> None:
    """Default ``sp.tl.spackle_complete(adata)`` on her2st (10,135 spots x 128 genes) in a fresh process."""
    _load_set("her2st")
    code = (
        "import time, resource, anndata as ad, spared_tools as sp, torch;"
        "sp.settings.progress = False;"
        "a = ad.read_h5ad('benchmarks/_work/spackle_her2st.h5ad');"
        "ru = lambda: resource.getrusage(resource.RUSAGE_SELF);"
        "r0 = ru(); t = time.perf_counter();"
        "sp.tl.spackle_complete(a);"
        "dt = time.perf_counter() - t;"
        "r1 = ru(); cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime);"
        "tr = a.uns['spackle']['train'];"
        "print(a.n_obs, a.n_vars, f'{dt:.1f}', f'{cpu:.1f}', f'{r1.ru_maxrss / 1024:.0f}', tr['steps'], "
        "tr['max_steps'], tr['best_step'], f\"{tr['seconds']:.1f}\", torch.get_num_threads())"
    )
    load0 = _load_avg()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    n, g, dt, cpu, rss, st, mx, best, t_tr, thr = out.stdout.split()[-10:]
    rep(
        f"[default10k] fresh process: sp.tl.spackle_complete(adata) with the defaults on her2st ({n} spots x "
        f"{g} genes; split column: train A-D, validation E): wall {dt} s (training {t_tr} s: {st} of max {mx} "
        f"steps, best step {best}); CPU time {cpu} s on {thr} torch threads; peak RSS {float(rss) / 1024:.2f} "
        f"GiB (target <= 4 GiB); load avg {load0}->{_load_avg()} on 2 cores"
    )
    rep(
        f"[default10k] on idle cores the run needs about CPU time / threads = {float(cpu) / int(thr):.0f} s "
        f"(a lower bound; the threads_quiet.txt step time gives {int(st) * 0.094 + 10:.0f} s) against the "
        "target <= 180 s"
    )


def _fresh_completion(rep: Report) -> None:
    """Completion of the saved 80k-spot collection in a fresh process: wall, CPU time and peak RSS."""
    for prec in ("32", "bf16"):
        code = (
            "import time, resource, anndata as ad, spared_tools as sp;"
            "sp.settings.progress = False;"
            "a = ad.read_h5ad('benchmarks/_work/spackle_80k.h5ad');"
            "m = sp.tl.SpackleModel.load('benchmarks/_work/spackle_speed_model', a);"
            "ru = lambda: resource.getrusage(resource.RUSAGE_SELF);"
            "r0 = ru(); t = time.perf_counter();"
            f"sp.tl.spackle_complete(a, model=m, inference_precision='{prec}');"
            "dt = time.perf_counter() - t;"
            "r1 = ru(); cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime);"
            "print(f'{a.n_obs} {dt:.2f} {cpu:.2f} {r0.ru_maxrss / 1024:.0f} {r1.ru_maxrss / 1024:.0f}')"
        )
        load0 = _load_avg()
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        n, dt, cpu, r0, r1 = out.stdout.split()[-5:]
        n, dt, cpu = int(n), float(dt), float(cpu)
        rep(
            f"[speed] fresh process, precision {prec}: sp.tl.spackle_complete({n} spots x 128 genes, trained "
            f"model): wall {dt:.1f} s = {n / dt:.0f} spots/s under load avg {load0}->{_load_avg()} (target "
            f"< 60 s); CPU time {cpu:.1f} s (all threads; torch default threads = {os.cpu_count()}) = "
            f"{n / cpu:.0f} spots per CPU-second, i.e. an upper bound on the wall time on idle cores"
        )
        rep(
            f"[speed]   peak RSS {float(r1) / 1024:.2f} GiB for the whole process incl. the 80k AnnData "
            f"({float(r0) / 1024:.2f} GiB after loading, before completion; target < 4 GiB)"
        )


def part_peer(rep: Report, steps: int) -> None:
    py = ROOT / "benchmarks" / "_work" / "venv-spared" / "bin" / "python"
    rep(
        "[peer] reference implementation: spared==2.2.1, spared.spackle (GeneImputationModel / train_spackle)"
    )
    rep(
        "[peer] NO GPU on this machine. The reference train_spackle() builds "
        "lightning.Trainer(accelerator='gpu', devices=1) unconditionally, so it cannot run here as published."
    )
    if not py.exists():
        rep(f"[peer] peer environment {py} absent (benchmarks/setup_peer_env.sh not run): not attempted.")
        return
    probe = subprocess.run(
        [str(py), "-c", "import spared, importlib; importlib.import_module('spared.spackle.main')"],
        capture_output=True,
        text=True,
    )
    last = (probe.stderr.strip().splitlines() or ["ok"])[-1]
    rep(f"[peer] importing spared.spackle.main in the peer venv: {last}")
    src = subprocess.run(
        [
            str(py),
            "-c",
            "import spared, pathlib; print(pathlib.Path(spared.__file__).parent / 'spackle' / 'main.py')",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if src and Path(src).exists():
        lines = Path(src).read_text().splitlines()
        for i, line in enumerate(lines, 1):
            if "accelerator=" in line or line.startswith(("from spackle", "from lightning")):
                rep(f"[peer]   {Path(src).name}:{i}: {line.strip()}")
    has_l = subprocess.run([str(py), "-c", "import lightning"], capture_output=True).returncode == 0
    rep(f"[peer] `lightning` installed in the peer venv: {has_l}")
    rep(
        "[peer] => the reference SpaCKLE cannot run on this machine (top-level `spackle.*` imports that only "
        "resolve from inside its source folder, `lightning` not installed, and a hard-coded GPU accelerator). "
        "No reference MSE on the same split/steps can be reported; our numbers are compared with the median "
        "method, which is what the paper compares against."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--part",
        choices=[
            "her2st",
            "mob",
            "paste",
            "visium",
            "speed",
            "steptime",
            "default10k",
            "complete80k",
            "peer",
        ],
        required=True,
    )
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--old-steps", type=int, default=3000, help="steps of the old-defaults peer")
    ap.add_argument("--batch-size", type=int, default=256, help="training batch (neighbourhoods per step)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest when the 2 cores are shared with other jobs)",
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    global BATCH, OLD_STEPS
    BATCH = args.batch_size
    OLD_STEPS = args.old_steps
    sp.settings.progress = False
    rep = Report(f"spackle_{args.part}")
    rep(f"# bench_spackle --part {args.part}  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    rep(f"# {machine_info()}")
    rep(
        f"# training batch {args.batch_size}; torch threads {args.threads}; load average {_load_avg()} (2 cores shared with other jobs)"
    )
    default_steps = {"speed": 20, "steptime": 40}
    t0 = time.perf_counter()
    parts = {
        "her2st": part_her2st,
        "mob": part_mob,
        "paste": part_paste,
        "visium": part_visium,
        "speed": part_speed,
        "steptime": part_steptime,
        "default10k": part_default10k,
        "complete80k": lambda rep, steps: _fresh_completion(rep),
        "peer": part_peer,
    }
    parts[args.part](rep, args.steps or default_steps.get(args.part, 0))
    rep(f"# total {time.perf_counter() - t0:.0f} s; peak RSS {peak_rss_mb():.0f} MiB")
    print("wrote", rep.save())


if __name__ == "__main__":
    main()
