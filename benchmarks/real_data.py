"""Real caches, default vs paper configuration: the HelpSteer2 subset (MiniLM) and the demo data.

Records what the numbers are; nothing here is tuned to the data (every setting is MixtureConfig's /
AdaptConfig's own default or the paper's, and the demo's stage-1 schedule is DemoConfig's default).

Two regimes, each a stage-1 run and the stage-2 configuration that goes with it:
  paper   : MixtureConfig.paper(method=...)  (prompt router, per-example entropy, eq. 4) + AdaptConfig.paper() (tau 1e-3)
  default : MixtureConfig(method=...)        (router_input 'auto' -> context, batch balance) + AdaptConfig() (tau 1.0)

HelpSteer2 subset (/work/shared/data/helpsteer2_subset, MiniLM cache):
  1a. stage 1, four methods x both regimes: best head per attribute (paper Tables 7/8, Figure 2),
      routed accuracy, router entropy, head agreement;
  1b. stage 2, budgets 10/25/50/100 x 5 seeds per regime: the full comparison table at B = 50 and the
      budget curve (150 is refused: complexity has 130 train pairs).
Demo (recipe 'demo'): stage 1 x both regimes, stage 2 at B = 5/10/25/50 x 3 seeds (B = 50 is the headline).

    python benchmarks/real_data.py --workdir /tmp/real_data --hs2-cache /tmp/hs2.h5

Without --hs2-cache the HelpSteer2 cache is embedded into WORKDIR/hs2.h5 first (what
`micro embed helpsteer2 --path ... --model minilm --out WORKDIR/hs2.h5` does; ~6 min on a 2-core CPU).
A cache that exists is checked by `embed_table` (a finished cache of the same table and model is left
alone). Writes WORKDIR/real_data.md (all tables) and WORKDIR/real_data.json, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from micro.data import load_preferences, table_sha256
from micro.demo.pipeline import DemoConfig
from micro.embedcache import embed_table
from micro.embedcache.store import load_split
from micro.heads import MixtureConfig, run_fit_mixture
from micro.router import AdaptConfig, BudgetError, run_adapt
from micro.router.draws import check_budgets

STAGE1_METHODS = ("single", "static", "ensemble", "micro")
REGIMES = ("paper", "default")
HS2_BUDGETS = [10, 25, 50, 100]
HS2_TABLE_METHODS = ("micro", "single", "static", "ensemble-best", "stage1-best", "hyre", "micro-hyre",
                     "budget-bt", "oracle", "micro-refine")
DEMO_BUDGETS = [5, 10, 25, 50]  # `micro demo`'s budgets; B = 50 is the headline
DEMO_METHODS = ("micro", "micro-refine", "budget-bt", "oracle", "single")


def mixture_config(regime: str, method: str, **extra) -> MixtureConfig:
    return MixtureConfig.paper(method=method, **extra) if regime == "paper" else MixtureConfig(method=method, **extra)


def adapt_config(regime: str, **extra) -> AdaptConfig:
    return AdaptConfig.paper(**extra) if regime == "paper" else AdaptConfig(**extra)


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def pm(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "-"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------------------------------
# the steps
# ------------------------------------------------------------------------------------------------
def ensure_cache(source: str, path: str | None, cache: Path, log) -> dict:
    table = load_preferences(source, path=path)
    t = time.perf_counter()
    report = embed_table(table, model="minilm", out=cache, source_sha256=table_sha256(table), progress=False,
                         log=lambda m: None)
    info = report.to_dict()
    log(f"{source}: cache {cache} ({'reused' if report.noop else 'embedded'} in {time.perf_counter() - t:.1f}s)")
    return {"cache": str(cache), "noop": report.noop, "pairs": info.get("n_pairs"), "seconds": round(time.perf_counter() - t, 1),
            "table": table}


def label_conflicts(table, reference: str = "helpfulness") -> str:
    """How often the same (prompt, response pair) is ordered differently by two attributes: the group
    structure a context-aware model could exploit, before any model is fitted."""
    import pandas as pd

    df = pd.DataFrame({"split": table["split"], "attribute": table["attribute"],
                       "key": [(p, min(c, r), max(c, r)) for p, c, r in zip(table["prompt"], table["chosen"], table["rejected"])],
                       "dir": [c < r for c, r in zip(table["chosen"], table["rejected"])]})
    lines = []
    for split, g in df.groupby("split", sort=False):
        per_key = g.groupby("key")["dir"].agg(["size", "nunique"])
        multi = per_key[per_key["size"] > 1]
        piv = g.pivot_table(index="key", columns="attribute", values="dir", aggfunc="first")
        agree = []
        for a in piv.columns:
            if a != reference:
                both = piv[[reference, a]].dropna()
                agree.append(f"{a} {float((both[reference] == both[a]).mean()):.2f} (n={len(both)})")
        lines.append(f"- {split}: {g['key'].nunique()} distinct response pairs; {len(multi)} are labelled in 2+ attributes, "
                     f"{int((multi['nunique'] > 1).sum())} of them in opposite directions. Agreement with {reference}: "
                     + ", ".join(agree) + ".")
    return "\n".join(lines)


def stage1(cache: Path, root: Path, epochs: int | None, log) -> dict:
    """Fit the four methods per regime under root/<regime>/<method>; returns {regime: {method: metrics}}."""
    out = {}
    for regime in REGIMES:
        out[regime] = {}
        for method in STAGE1_METHODS:
            cfg = mixture_config(regime, method, **({"epochs": epochs} if epochs else {}))
            m = run_fit_mixture(cache, root / regime / method, cfg, overwrite=True)
            out[regime][method] = m
            log(f"  stage 1 {regime:7s} {method:8s} avg best {m['test']['average']['best_accuracy']:.3f} "
                f"routed {m['test']['average']['routed_accuracy']:.3f} ({m['train_seconds']:.1f}s, {m['train_steps']} steps)")
    return out


def same_fit(a: dict, b: dict) -> bool:
    pa, pb = a["test"]["per_attribute"], b["test"]["per_attribute"]
    return all(np.allclose(pa[k]["head_accuracy"], pb[k]["head_accuracy"]) for k in pa)


def stage1_tables(s1: dict, attributes: list[str]) -> str:
    """Rows = methods (baselines once: they are config-independent, checked), columns = attributes + Average."""
    rows_spec = [("single", "paper"), ("static", "paper"), ("ensemble", "paper"), ("micro", "paper"), ("micro", "default")]
    notes = []
    for method in ("single", "static", "ensemble"):
        if not same_fit(s1["paper"][method], s1["default"][method]):
            rows_spec.insert(rows_spec.index(("micro", "paper")), (method, "default"))
            notes.append(f"{method}: the default-config fit differs from the paper-config fit; both rows shown.")
    if not notes:
        notes.append("single / static / ensemble: the default-config fits equal the paper-config fits (no router; "
                     "static weights are input-independent, so both balance forms coincide), one row each.")

    def label(method, regime):
        if method == "micro":
            cfg = s1[regime][method]["config"]
            return f"micro ({regime}: router {cfg['router_input']}, balance {cfg['balance']})"
        return method

    header = ["method"] + attributes + ["Average"]
    best_rows, routed_rows, health = [], [], []
    for method, regime in rows_spec:
        m = s1[regime][method]
        per, avg = m["test"]["per_attribute"], m["test"]["average"]
        best_rows.append([label(method, regime)] + [f"{per[a]['best_accuracy']:.3f} (h{per[a]['best_head'] + 1})" for a in attributes]
                         + [f"**{avg['best_accuracy']:.3f}**"])
        routed_rows.append([label(method, regime)] + [f"{per[a]['routed_accuracy']:.3f}" for a in attributes]
                           + [f"**{avg['routed_accuracy']:.3f}**"])
        health.append([label(method, regime), f3(m["router_entropy"]), f3(m["head_agreement"]),
                       f"{m['test']['overall']['loss']:.4f}", str(m["train_steps"]), f"{m['train_loss'][-1]:.4f}",
                       f"{m['train_seconds']:.1f}", "; ".join(w.split(":")[0] for w in m["warnings"]) or "-"])
    test_pairs = {a: s1["paper"]["single"]["test"]["per_attribute"][a]["pairs"] for a in attributes}
    return "\n\n".join([
        "Best head per attribute (accuracy on the test split; hN = head N):\n\n" + md_table(header, best_rows),
        "Routed accuracy (the stage-1 mixture with its own router; single: the head; static: the learned fixed weights; "
        "ensemble: the uniform average):\n\n" + md_table(header, routed_rows),
        "Health: router entropy (1.0 = uniform), pairwise head agreement, test mixture NLL (nats), steps, last-epoch "
        "train loss, fit seconds, warnings:\n\n"
        + md_table(["method", "router entropy", "head agreement", "test NLL", "steps", "train loss", "fit s", "warnings"], health),
        "Test pairs per attribute: " + ", ".join(f"{a} {n}" for a, n in test_pairs.items()) + ". " + " ".join(notes),
    ])


def diagnostic_table(s1: dict, epochs: int) -> str:
    """Stage 1 only, every method x regime at `epochs`: average best / routed, entropy, agreement."""
    header = ["regime", "method", "steps", "avg best head", "avg routed", "router entropy", "head agreement"]
    rows = []
    for regime in REGIMES:
        for method in STAGE1_METHODS:
            m = s1[regime][method]
            avg = m["test"]["average"]
            rows.append([regime, method, str(m["train_steps"]), f"{avg['best_accuracy']:.3f}", f"{avg['routed_accuracy']:.3f}",
                         f3(m["router_entropy"]), f3(m["head_agreement"])])
    return (f"Diagnostic, not a default: stage 1 at {epochs} epochs (the demo's step count; the default 4 epochs are "
            "only 156 steps on 1,217 pairs). Stage 2 is not run on these.\n\n" + md_table(header, rows))


def stage2(cache: Path, root: Path, budgets: list[int], seeds: int, log) -> dict:
    out = {}
    for regime in REGIMES:
        t = time.perf_counter()
        cfg = adapt_config(regime, budgets=budgets, seeds=seeds,
                           baseline_runs=[str(root / regime / m) for m in STAGE1_METHODS if m != "micro"])
        res = run_adapt(cache, root / regime / "micro", root / regime / "adapt", cfg, overwrite=True)
        out[regime] = res
        log(f"  stage 2 {regime:7s} tau {cfg.tau:g} budgets {budgets} x {seeds} seeds: {time.perf_counter() - t:.1f}s")
    return out


def hs2_stage2_tables(s2: dict, budget: int) -> str:
    parts = []
    for regime in REGIMES:
        res = s2[regime]
        attrs = res["attributes"]
        at = res["summary"][str(budget)]
        rows = [[m] + [pm(at[m].get(a)) for a in attrs + ["Average"]] for m in HS2_TABLE_METHODS if m in at]
        stage1_cfg = res["stage1_config"]
        parts.append(
            f"**{regime}** (stage 1 router {stage1_cfg['router_input']}, balance {stage1_cfg['balance']}; stage 2 tau "
            f"{res['config']['tau']:g}), B = {budget}, {res['config']['seeds']} seeds:\n\n"
            + md_table(["method"] + attrs + ["Average"], rows)
        )
    return "\n\n".join(parts)


def budget_curve_table(s2: dict) -> str:
    budgets = sorted(s2["paper"]["summary"], key=int)
    header = ["B"] + [f"{m} ({r})" for r in REGIMES for m in ("micro", "micro-refine")] + ["budget-bt", "single", "oracle"]
    rows = []
    for b in budgets:
        p, d = s2["paper"]["summary"][b], s2["default"]["summary"][b]
        rows.append([b, pm(p["micro"]["Average"]), pm(p["micro-refine"]["Average"]), pm(d["micro"]["Average"]),
                     pm(d["micro-refine"]["Average"]), pm(p["budget-bt"]["Average"]), pm(p.get("single", {}).get("Average")),
                     pm(p["oracle"]["Average"])])
    plots = "; ".join(f"{r}: `{s2[r]['files'].get('budget_curve.png', 'not drawn')}`" for r in REGIMES)
    return "Average test accuracy (mean ± std over seeds):\n\n" + md_table(header, rows) + f"\n\nbudget_curve.png: {plots}"


def regime_summary(s1: dict, s2: dict, budget: int, methods: tuple[str, ...]) -> str:
    """Rows = regimes; stage-1 average best / routed per method, stage-2 averages at `budget`."""
    h1 = ["regime"] + [f"{m} best / routed" for m in STAGE1_METHODS] + ["micro entropy", "micro agreement"]
    r1 = []
    for regime in REGIMES:
        row = [regime]
        for m in STAGE1_METHODS:
            avg = s1[regime][m]["test"]["average"]
            row.append(f"{avg['best_accuracy']:.3f} / {avg['routed_accuracy']:.3f}")
        row += [f3(s1[regime]["micro"]["router_entropy"]), f3(s1[regime]["micro"]["head_agreement"])]
        r1.append(row)
    h2 = ["regime"] + list(methods)
    r2 = [[regime] + [pm(s2[regime]["summary"][str(budget)].get(m, {}).get("Average")) for m in methods] for regime in REGIMES]
    return ("Stage 1 (average over groups of the best head / of the routed mixture):\n\n" + md_table(h1, r1)
            + f"\n\nStage 2 at B = {budget} (average over groups, mean ± std over seeds):\n\n" + md_table(h2, r2))


# ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/real_data")
    parser.add_argument("--hs2-path", default="/work/shared/data/helpsteer2_subset")
    parser.add_argument("--hs2-cache", default=None, help="existing MiniLM cache of the subset (else WORKDIR/hs2.h5)")
    parser.add_argument("--demo-cache", default=None, help="existing MiniLM cache of the demo data (else WORKDIR/demo.h5)")
    parser.add_argument("--skip-hs2", action="store_true")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--diagnostic-epochs", type=int, default=40,
                        help="also fit HelpSteer2 stage 1 at this many epochs (diagnostic table); 0 skips")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    md, record = [], {}
    if not args.skip_hs2:
        cache = Path(args.hs2_cache) if args.hs2_cache else work / "hs2.h5"
        record["hs2_cache"] = ensure_cache("helpsteer2", args.hs2_path, cache, log)
        conflicts = label_conflicts(record["hs2_cache"].pop("table"))
        train = load_split(cache, "train")
        counts = dict(zip(train.attributes, np.bincount(train.attribute.numpy(), minlength=len(train.attributes)).tolist()))
        try:
            check_budgets(train, [150], str(cache))
            refused = "B = 150 accepted"
        except BudgetError as exc:
            refused = f"B = 150 refused: {exc}"
        attrs = list(train.attributes)
        root = work / "hs2"
        s1 = stage1(cache, root, None, log)
        s2 = stage2(cache, root, HS2_BUDGETS, 5, log)
        md += ["## HelpSteer2 subset (MiniLM)", "",
               f"Train pairs per attribute: {counts}. {refused}", "",
               "Label conflicts in the data (same prompt and response pair, two attributes):", "", conflicts, "",
               "### 1a. Stage 1", "", stage1_tables(s1, attrs), "",
               "### 1b. Stage 2 at B = 50 (full comparison)", "", hs2_stage2_tables(s2, 50), "",
               "### 1b. Budget curve", "", budget_curve_table(s2), "",
               "### Regime summary", "", regime_summary(s1, s2, 50, DEMO_METHODS), ""]
        if args.diagnostic_epochs:
            s1_long = stage1(cache, work / f"hs2_e{args.diagnostic_epochs}", args.diagnostic_epochs, log)
            md += ["### Diagnostic: longer stage 1", "", diagnostic_table(s1_long, args.diagnostic_epochs), ""]
        record["hs2"] = {"train_pairs": counts, "budget_150": refused,
                         "stage1": {r: {m: {k: v[k] for k in ("test", "router_entropy", "head_agreement", "train_steps",
                                                               "train_seconds", "train_loss", "config", "warnings")}
                                        for m, v in s1[r].items()} for r in REGIMES},
                         "stage2": {r: {"summary": s2[r]["summary"], "config": s2[r]["config"], "timings_s": s2[r]["timings_s"],
                                        "files": s2[r]["files"]} for r in REGIMES}}

    if not args.skip_demo:
        cache = Path(args.demo_cache) if args.demo_cache else work / "demo.h5"
        record["demo_cache"] = ensure_cache("demo", None, cache, log)
        record["demo_cache"].pop("table")
        epochs = DemoConfig().stage1_epochs
        root = work / "demo"
        s1 = stage1(cache, root, epochs, log)
        s2 = stage2(cache, root, DEMO_BUDGETS, 3, log)
        md += ["## Demo (recipe 'demo', MiniLM)", "",
               f"Stage-1 epochs: {epochs or 'until the held-out NLL stops improving'} (DemoConfig's default) in both regimes.", "",
               regime_summary(s1, s2, 50, DEMO_METHODS), "",
               "Budget curve (the demo's own budgets):", "", budget_curve_table(s2), "",
               "Full demo tables:", "", hs2_stage2_tables(s2, 50), ""]
        record["demo"] = {"stage1": {r: {m: {k: v[k] for k in ("test", "router_entropy", "head_agreement", "train_steps", "config")}
                                         for m, v in s1[r].items()} for r in REGIMES},
                          "stage2": {r: {"summary": s2[r]["summary"], "config": s2[r]["config"]} for r in REGIMES}}

    total = time.perf_counter() - t0
    md.append(f"Total wall time: {total:.1f} s")
    record["total_s"] = round(total, 1)
    text = "\n".join(md) + "\n"
    (work / "real_data.md").write_text(text)
    (work / "real_data.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(text)
    log(f"wrote {work / 'real_data.md'} and {work / 'real_data.json'}")


if __name__ == "__main__":
    main()
