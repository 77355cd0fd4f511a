"""SpaCKLE default selection on VALIDATION data only (issue 22, points 1 and 2). Rerunnable.

Four benchmark sets, each with a train / validation / test split; this script never reads the test
spots' scores (they are left to ``benchmarks/bench_spackle.py``):

* ``her2st``  her2st patient split: train patients A-D, validation E, test F (28 legacy-ST sections);
* ``mob``     STUtility mouse olfactory bulb (ST-2k): train MOB1+MOB2, validation MOB3, test MOB4;
* ``paste``   PASTE breast-cancer layers (ST-1k): train slices 1+2, validation 3, test 4;
* ``visium``  the one Visium CytAssist slide split into column bands: left 60 % train, next 20 %
  validation, right 20 % test.

For every (set, configuration) it trains SpaCKLE for a fixed budget with *no* early stopping, validating
every ``--every`` steps (the validation curve), restores the best-validation weights and scores the
validation spots with the paper's protocol (30 % of the observed entries hidden, ``--masks`` masks) against
the median method on the same masks: ``val_red`` = 1 - MSE(SpaCKLE) / MSE(median). The curves give the
early-stopping rule (``--stage stopping`` replays every curve under each candidate rule); the
configurations compare width / depth, dropout, weight decay, neighbour rings, the input layer (median vs
the per-slide ComBat layer), the training mask fraction and the learning rate (and its schedule).

    nice .venv/bin/python experiments/spackle_selection.py --stage prep
    nice .venv/bin/python experiments/spackle_selection.py --stage sweep --sets her2st --configs all
    nice .venv/bin/python experiments/spackle_selection.py --stage sweep --sets mob,paste,visium --configs old,new
    .venv/bin/python experiments/spackle_selection.py --stage stopping
    .venv/bin/python experiments/spackle_selection.py --stage table

Outputs: ``experiments/results/spackle_selection_runs.csv`` (one row per run, appended),
``spackle_selection_curves.csv`` (validation curves), ``spackle_selection.txt`` (tables).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import spared_tools as sp

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "benchmarks" / "_work"  # git-ignored
OUT = ROOT / "experiments" / "results"
RUNS = OUT / "spackle_selection_runs.csv"
CURVES = OUT / "spackle_selection_curves.csv"
TABLE = OUT / "spackle_selection.txt"

#: the defaults before issue 22 (3,000 fixed steps, no early stopping)
OLD = {
    "d_model": 128,
    "n_heads": 4,
    "n_layers": 2,
    "dim_feedforward": 256,
    "dropout": 0.0,
    "n_rings": None,
    "layer": "median",
    "lr": 1e-3,
    "weight_decay": 0.0,
    "mask": 0.3,
    "batch_size": 256,
}
#: one factor at a time from the old defaults
CONFIGS: dict[str, dict] = {
    "old": {},
    "dropout0.1": {"dropout": 0.1},
    "wd1e-4": {"weight_decay": 1e-4},
    "d64": {"d_model": 64, "dim_feedforward": 128},
    "layers1": {"n_layers": 1},
    "rings1": {"n_rings": 1},
    "combat": {"layer": "combat"},
    "mask0.5": {"mask": 0.5},
    "mask0.1-0.5": {"mask": (0.1, 0.5)},
    "lr3e-4": {"lr": 3e-4},
    "lr3e-3": {"lr": 3e-3},
    "slidecentre": {"layer": "median_sc"},
    # the package centres every slide since issue 22 (so "old" run today = the package's network with
    # centring); "nocentre" switches the package's centring off (= the old defaults on today's runner)
    "nocentre": {"centre": False},
    "lr3e-3+slidecentre": {"lr": 3e-3, "layer": "median_sc"},
    "plateau": {"lr_plateau": 2},
    "lr3e-3+plateau": {"lr": 3e-3, "lr_plateau": 2},
    "lr3e-3+d64": {"lr": 3e-3, "d_model": 64, "dim_feedforward": 128},
    "lr3e-3+dropout0.1": {"lr": 3e-3, "dropout": 0.1},
}
CTOR = ("d_model", "n_heads", "n_layers", "dim_feedforward", "dropout", "n_rings")


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


# ---------------------------------------------------------------------------------------------- data
def _prep_her2st() -> ad.AnnData:
    a = sp.io.read_her2st(DATA / "her2st_raw", images=False)
    a.obs["patient"] = a.obs["slide_id"].astype(str).str[0]
    sp.pp.split_by(a, key="patient", train=["A", "B", "C", "D"], val=["E"], test=["F"])
    return sp.pp.spared_pipeline(a, organism="human", split_key="split")


def _prep_mob() -> ad.AnnData:
    parts = [ad.read_h5ad(DATA / "stutility_mob" / f"stutility_MOB{i}.h5ad") for i in range(1, 5)]
    a = sp.io.concat_slides(parts)
    sp.pp.split_by(a, key="slide_id", train=["MOB1", "MOB2"], val=["MOB3"], test=["MOB4"])
    return sp.pp.spared_pipeline(a, organism="mouse", split_key="split", gene_id_key="gene_id")


def _prep_paste() -> ad.AnnData:
    parts = [ad.read_h5ad(DATA / "paste_breast_layers" / f"paste_slice{i}.h5ad") for i in range(1, 5)]
    a = sp.io.concat_slides(parts)
    sp.pp.split_by(a, key="slide_id", train=["slice1", "slice2"], val=["slice3"], test=["slice4"])
    return sp.pp.spared_pipeline(a, organism="human", split_key="split")


def _prep_visium() -> ad.AnnData:
    a = sp.io.read_visium(DATA / "visium_cytassist_mouse_raw")
    if "slide_id" not in a.obs:
        a.obs["slide_id"] = "visium"
    col = a.obs["array_col"].to_numpy()
    q = np.quantile(col, [0.6, 0.8])
    a.obs["band"] = np.where(col <= q[0], "left", np.where(col <= q[1], "middle", "right"))
    sp.pp.split_by(a, key="band", train=["left"], val=["middle"], test=["right"])
    p = sp.pp.spared_pipeline(a, organism="mouse", split_key="split")
    p.obs["slide_id"] = p.obs["slide_id"].astype(str)
    return p


PREP = {"her2st": _prep_her2st, "mob": _prep_mob, "paste": _prep_paste, "visium": _prep_visium}


def load_set(name: str) -> ad.AnnData:
    """The processed set (SpaRED pipeline, statistics from the training split), cached in benchmarks/_work."""
    path = WORK / f"spackle_{name}.h5ad"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        a = PREP[name]()
        a.write_h5ad(path)
        print(f"[prep] {name}: {a.n_obs} spots x {a.n_vars} genes in {time.perf_counter() - t0:.0f} s")
    return ad.read_h5ad(path)


# ---------------------------------------------------------------------------------------------- model
def train_model(adata: ad.AnnData, cfg: dict, *, steps: int, every: int, seed: int = 0, **extra):
    """Build and train SpaCKLE with configuration ``cfg`` (either data contract of SpackleModel)."""
    c = {**OLD, **cfg}
    ctor = {k: c[k] for k in CTOR}
    layer = "combat" if c["layer"] == "combat" and "combat" in adata.layers else c["layer"]
    if layer == "median_sc" and layer not in adata.layers:
        adata.layers[layer] = slide_centred(adata)
    train = {
        "max_steps": int(steps),
        "val_check_interval": int(every),
        "batch_size": int(c["batch_size"]),
        "lr": float(c["lr"]),
        "weight_decay": float(c["weight_decay"]),
        **extra,
    }
    _plateau(c.get("lr_plateau"), every)
    cls = sp.tl.SpackleModel
    frac_name = "mask_frac" if "mask_frac" in inspect.signature(cls.train).parameters else "mask_prob"
    train[frac_name] = c["mask"]
    if "early_stopping_patience" in inspect.signature(cls.train).parameters:
        train["early_stopping_patience"] = None  # the whole curve (the stopping stage replays the rules)
    if not c.get("centre", True):
        return _without_centring(adata, cls, layer, seed, ctor, train)
    if "adata" in inspect.signature(cls.__init__).parameters:  # old contract: data bound at construction
        model = cls(adata, layer=layer, mask_layer="mask", seed=seed, **ctor)
        return model.train(**train)
    model = cls(seed=seed, **ctor)
    return model.train(adata, layer=layer, mask_layer="mask", **train)


def _without_centring(adata: ad.AnnData, cls, layer: str, seed: int, ctor: dict, train: dict):
    """Train a model whose per-slide centring offsets are all zero (a model without ``centre_mean``
    completes uncentred, so the saved model behaves the same once loaded)."""

    def zero(self, values, known, table):
        return np.zeros_like(values)

    model = cls(seed=seed, **ctor)
    model._offsets = zero.__get__(model)  # type: ignore[method-assign]
    model.train(adata, layer=layer, mask_layer="mask", **train)
    del model._offsets
    model.centre_mean = None
    return model


def slide_centred(adata: ad.AnnData) -> np.ndarray:
    """The median layer minus each slide's per-gene mean of its observed entries (per-slide centring).

    Shifts keep the layer's units, so the MSE of a centred completion equals the MSE in the median
    layer's units (the slide means here include every observed entry of the slide; the package computes
    them from the entries the model may read).
    """
    x = np.asarray(adata.layers["median"], dtype=np.float64)
    obs = np.asarray(adata.layers["mask"], dtype=bool)
    out = x.copy()
    # per slide and split (the Visium band split has one slide: its bands are centred apart)
    slides = (adata.obs["slide_id"].astype(str) + "/" + adata.obs["split"].astype(str)).to_numpy()
    for s in np.unique(slides):
        r = slides == s
        cnt = obs[r].sum(0)
        mu = np.where(cnt > 0, (x[r] * obs[r]).sum(0) / np.maximum(cnt, 1), 0.0)
        out[r] -= mu
    return out.astype(np.float32)


def _plateau(lr_plateau: int | None, every: int) -> None:
    """Reduce-on-plateau in the training plan (models.spackle) for the runs that ask for it."""
    import functools

    import spared_tools.models.spackle as ms

    base = getattr(ms, "_BasePlan", ms.SpackleTrainingPlan)
    ms._BasePlan = base  # type: ignore[attr-defined]
    if "lr_plateau" not in inspect.signature(base.__init__).parameters:
        raise RuntimeError("this version of SpackleTrainingPlan has no lr_plateau")
    ms.SpackleTrainingPlan = (  # type: ignore[misc]
        base
        if lr_plateau is None
        else type(
            "PlateauPlan",
            (base,),
            {
                "__init__": functools.partialmethod(
                    base.__init__, lr_plateau=int(lr_plateau), plateau_every=int(every)
                )
            },
        )
    )


def val_reduction(adata: ad.AnnData, model, masks: int, seed: int = 0) -> dict:
    """Validation spots, 30 % of their observed entries hidden: SpaCKLE vs the median method."""
    res = sp.tl.evaluate_completion(
        adata, model=model, eval_value="val", mask_frac=0.3, n_masks=masks, seed=seed + 100, key_added=None
    )
    m = res.groupby("method")["MSE"].mean()
    return {
        "val_mse": float(m["spackle"]),
        "val_mse_median": float(m["median"]),
        "val_red": float(1 - m["spackle"] / m["median"]),
    }


def _append(path: Path, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    df.to_csv(path, mode="a", header=not path.exists(), index=False)


def stage_sweep(sets: list[str], configs: list[str], steps: int, every: int, masks: int, tag: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in sets:
        adata = load_set(name)
        for cname in configs:
            cfg = CONFIGS[cname]
            load0 = _load()
            t0 = time.perf_counter()
            model = train_model(adata, cfg, steps=steps, every=every)
            secs = time.perf_counter() - t0
            info = model.train_info_
            red = val_reduction(adata, model, masks)
            row = {
                "set": name,
                "config": cname,
                "cfg": json.dumps(cfg),
                "tag": tag,
                "steps": int(info["steps"]),
                "best_step": info["best_step"],
                "best_val_MSE_curve": None if info["best_val"] is None else info["best_val"]["MSE"],
                **red,
                "seconds": round(secs, 1),
                "s_per_step": round(secs / max(1, int(info["steps"])), 4),
                "load": f"{load0}->{_load()}",
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
            _append(RUNS, [row])
            # kept for benchmarks/bench_spackle.py (its test scores of the old defaults); never scored here
            model.save(WORK / "selection_models" / f"{name}_{cname}_{tag}", overwrite=True)
            hist = model.history_
            _append(
                CURVES,
                [
                    {
                        "set": name,
                        "config": cname,
                        "tag": tag,
                        "step": int(r["step"]),
                        "val_MSE": float(r["MSE"]),
                    }
                    for _, r in hist.iterrows()
                ],
            )
            print(
                f"[{name}] {cname:12s} val_red {100 * red['val_red']:.2f} % (MSE {red['val_mse']:.4f} vs median "
                f"{red['val_mse_median']:.4f}); best step {info['best_step']} of {info['steps']}; {secs:.0f} s "
                f"(load {row['load']})",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------- stopping
def replay(
    curve: pd.DataFrame, every: int, patience: int, min_steps: int, min_delta: float
) -> tuple[int, float]:
    """Replay a validation curve (checks every ``every`` steps) under a stopping rule: (stop step, best MSE)."""
    best, ref, wait = np.inf, np.inf, 0
    for step, v in zip(curve["step"], curve["val_MSE"], strict=True):
        if step % every:
            continue
        best = min(best, v)
        if not np.isfinite(ref) or v < ref - min_delta * abs(ref):
            ref, wait = v, 0
        else:
            wait += 1
        if wait >= patience and step >= min_steps:
            return int(step), float(best)
    return int(curve["step"].max()), float(min(best, curve["val_MSE"].iloc[-1]))


#: runs made after the package's own centring landed, where "old" means "the old network and optimiser on
#: today's package": with centring per lattice component (sweep3, before the fix) or per slide (sweep4)
TAG_LABELS = {
    "sweep3": "package centring per lattice component",
    "sweep4": "package centring per slide",
}


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    """``config`` extended by what its tag changed (one row or curve per (set, config, tag))."""
    df = df.copy()
    df["config"] = [
        f"{c} ({TAG_LABELS[t]})" if t in TAG_LABELS and c != "nocentre" else c
        for c, t in zip(df["config"], df["tag"], strict=True)
    ]
    return df


def stage_stopping(tag: str | None) -> str:
    curves = _labelled(pd.read_csv(CURVES))
    if tag:
        curves = curves[curves.tag == tag]
    lines = [
        "Early-stopping rules replayed on the validation curves (no early stopping during the runs):",
        "cost = steps run summed over curves; loss = mean relative excess of the rule's best val MSE",
        "over the full curve's best (0 = finds the same optimum).",
        "",
    ]
    rows = []
    for every in (50, 100, 200):
        for patience in (2, 3, 4, 5, 6, 8):
            for min_steps in (0, 200, 300, 400, 600):
                for min_delta in (0.0, 0.002, 0.005):
                    tot, losses = 0, []
                    for _, c in curves.groupby(["set", "config"]):
                        c = c.sort_values("step")
                        stop, best = replay(c, every, patience, min_steps, min_delta)
                        tot += stop
                        losses.append(best / c["val_MSE"].min() - 1)
                    rows.append(
                        (
                            every,
                            patience,
                            min_steps,
                            min_delta,
                            tot,
                            float(np.mean(losses)),
                            float(np.max(losses)),
                        )
                    )
    df = pd.DataFrame(
        rows, columns=["every", "patience", "min_steps", "min_delta", "steps_total", "loss_mean", "loss_max"]
    )
    df = df.sort_values(["loss_max", "steps_total"])
    lines.append(
        "rules within 2 % of every curve's optimum (checks every 50 steps cannot land on a 25-step optimum), cheapest first:"
    )
    lines.append(df[df.loss_max <= 0.02].sort_values("steps_total").head(20).to_string(index=False))
    lines.append("")
    lines.append("the default (validation every 50 steps, patience 5, min_steps 300, min_delta 0):")
    lines.append(
        df[(df.every == 50) & (df.patience == 5) & (df.min_steps == 300) & (df.min_delta == 0)].to_string(
            index=False
        )
    )
    lines.append("")
    lines.append("per curve under the default rule (stop step, best MSE found, curve minimum):")
    for key, c in curves.groupby(["set", "config"]):
        c = c.sort_values("step")
        stop, best = replay(c, 50, 5, 300, 0.0)
        lines.append(
            f"  {key}: stop {stop} of {int(c['step'].max())}, best {best:.4f}, minimum {c['val_MSE'].min():.4f} at step {int(c.loc[c['val_MSE'].idxmin(), 'step'])}"
        )
    lines.append("")
    lines.append(
        f"curves: {curves.groupby(['set', 'config']).ngroups}; full budget {int(curves.groupby(['set', 'config'])['step'].max().sum())} steps"
    )
    return "\n".join(lines)


def stage_table() -> str:
    runs = _labelled(pd.read_csv(RUNS))
    lines = [
        "Validation MSE reduction vs the median method (30 % of observed validation entries hidden).",
        "",
    ]
    # one baseline per set: the median method on the median layer (its MSE from the run of the old defaults)
    base = runs[runs.config == "old"].groupby("set")["val_mse_median"].last()
    runs["val_red"] = 1 - runs["val_mse"] / runs["set"].map(base)
    piv = runs.pivot_table(index="config", columns="set", values="val_red", aggfunc="last") * 100
    lines.append(piv.round(2).to_string())
    lines.append("")
    lines.append(runs.to_string(index=False))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["prep", "sweep", "stopping", "table"], required=True)
    ap.add_argument("--sets", default="her2st,mob,paste,visium")
    ap.add_argument("--configs", default="all")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--masks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="sweep1")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sp.settings.progress = False
    sp.settings.verbosity = 0
    sets = args.sets.split(",")
    if args.stage == "prep":
        for s in sets:
            load_set(s)
    elif args.stage == "sweep":
        configs = list(CONFIGS) if args.configs == "all" else args.configs.split(",")
        stage_sweep(sets, configs, args.steps, args.every, args.masks, args.tag)
    elif args.stage == "stopping":
        text = stage_stopping(None)
        print(text)
        (OUT / "spackle_selection_stopping.txt").write_text(text + "\n")
    else:
        text = stage_table()
        print(text)
        TABLE.write_text(text + "\n")


if __name__ == "__main__":
    main()
