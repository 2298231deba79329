"""Figure 3 of the paper: router weights for a dozen test prompts (needs matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..embedcache.store import CacheSplit, read_prompt_texts
from .model import MixtureRewardModel
from ..embedcache.store import router_table


def sample_prompts(split: CacheSplit, n: int = 12) -> list[int]:
    """Pair indices with distinct prompts, taken round-robin over attributes (deterministic)."""
    by_attr = [torch.nonzero(split.attribute == a).flatten().tolist() for a in range(len(split.attributes))]
    picked, seen, pos = [], set(), [0] * len(by_attr)
    while len(picked) < n and any(p < len(rows) for p, rows in zip(pos, by_attr)):
        for a, rows in enumerate(by_attr):
            while pos[a] < len(rows):
                i = rows[pos[a]]
                pos[a] += 1
                if int(split.prompt_index[i]) not in seen:
                    seen.add(int(split.prompt_index[i]))
                    picked.append(i)
                    break
            if len(picked) == n:
                break
    return picked


def router_heatmap(
    model: MixtureRewardModel,
    split: CacheSplit,
    out: str | os.PathLike,
    router_input: str = "prompt",
    *,
    cache_path: str | os.PathLike | None = None,
    n: int = 12,
) -> Path | None:
    """Write a heatmap (prompts x heads) of the router weights; None if there is nothing to route."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if model.router is None or len(split) == 0:
        return None
    rows = sample_prompts(split, n)
    table, index = router_table(split, router_input)
    with torch.no_grad():
        weights = model.log_weights(table[index[rows]].float()).exp().numpy()
    labels = [split.attributes[int(split.attribute[i])] for i in rows]
    if cache_path is not None:
        texts = read_prompt_texts(cache_path, [int(split.prompt_index[i]) for i in rows])
        labels = [f"{lab} | {_short(text)}" for lab, text in zip(labels, texts)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * model.k + 3.5, 0.9 + 0.38 * len(rows)))
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=max(1e-6, float(weights.max())), aspect="auto")
    ax.set_xticks(range(model.k), [f"head {k + 1}" for k in range(model.k)], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_title(f"Stage-1 router weights ({router_input} input)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _short(text: str, width: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def curve_starts(point: dict, kept: int, key: str = "heldout_nll") -> list[int]:
    """Which start each of a curve point's held-out values is: its "starts", or (a record without them)
    every start while several train side by side, then the kept one."""
    if "starts" in point:
        return point["starts"]
    return list(range(len(point[key]))) if len(point[key]) > 1 else [kept]


def heldout_curve(record: dict, out: str | os.PathLike) -> Path | None:
    """Write the held-out NLL and, where early stopping watched it, the calibrated held-out NLL (one line
    per restart while they train side by side) and the training loss against the step, with the kept
    (best) step marked (a cross-validated fit: the folds' values pooled); None for a fixed-epoch fit (no
    held-out slice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = record.get("curve") or []
    if not curve:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    kept = record.get("chosen", 0)
    for key, color, name in (("heldout_nll", "C0", "held-out NLL"), ("heldout_calibrated_nll", "C2", "held-out calibrated NLL")):
        if key not in curve[0]:
            continue
        series: dict[int, list] = {}  # each start's points
        for c in curve:
            for start, value in zip(curve_starts(c, kept, key), c[key]):
                series.setdefault(start, []).append((c["step"], value))
        for start, pts in series.items():  # the kept start bold, the others (dropped or compared) faint
            ax.plot(*zip(*pts), color=color, **({"label": name} if start == kept else {"alpha": 0.3}))
    ax.plot([c["step"] for c in curve], [c["train_loss"] for c in curve], color="C1", alpha=0.6, label="training NLL (sample of fit pairs)")
    folds = record.get("folds") or 0
    ax.axvline(record["best_step"], color="k", ls="--", lw=0.8, label=f"kept: step {record['best_step']}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per pair")
    where = f"{folds} folds pooled" if folds else "held-out slice"
    ax.set_title(f"Stage 1 ({where}): stopped at step {record['steps']} ({record['stop_reason']})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def save_figure(fig, ax, path, *, xlabel: str, ylabel: str, title: str, legend_size: int = 8):
    """Label, grid and legend an axes the project's way, save the figure at 120 dpi and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
