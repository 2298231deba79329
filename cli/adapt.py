"""`micro adapt`."""

from __future__ import annotations

from typing import List

import typer

from ..router.config import AdaptConfig
from ._app import app, fail
from ..outputs import error_line
from ._common import OverwriteOpt, option_error
from ._options import config_options

# ---- stage-2 commands (adapt) ----
@app.command("adapt")
@config_options(AdaptConfig, exclude=("options",), flags={"baseline_runs": "--baselines"})
def adapt_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) with contexts: budget pairs are drawn from its train split"),
    run_dir: str = typer.Argument(..., help="stage-1 `micro fit-mixture --method micro` run directory"),
    out: str = typer.Option(..., "--out", help="output directory (results.json/csv, table.md, budget_curve.png, routers/)"),
    budget: int = typer.Option(None, "--budget", help="one budget: the same as --budgets B"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="leave out the methods that need their own stage-1 fits: the same as adding -baselines to --methods"),
    set_options: List[str] = typer.Option(None, "--set", help="a method's option, METHOD.OPTION=VALUE, e.g. drm.components=4 (repeatable; `micro methods` lists them)"),
    mask_from: List[str] = typer.Option(None, "--mask-from", help="also mask the heads flagged in this audit.json (`micro audit`); repeatable"),
    paper: bool = typer.Option(False, "--paper", help="the paper's stage 2 (docs/defaults-vs-paper.md): tau of the cache's dataset (1e-3 HelpSteer2 / cross-dataset, 1e-4 RPR), --head-input auto"),
    paper_dataset: str = typer.Option(None, "--paper-dataset", help="with --paper: use this dataset's preset (helpsteer2 | rpr | preference-700k | cross-dataset | other)"),
    as_json: bool = typer.Option(False, "--json", help="print results.json's summary as JSON instead of the table"),
    overwrite: OverwriteOpt = False,
    overrides: dict = None,
) -> None:
    """Stage 2: adapt the stage-1 router to user contexts (Hedge soft labels, paper eq. 6 / Algorithm 1)
    over budgets x seeds, and score it beside the baselines on the same test pairs.

    Every option after --config is a field of micro.router.AdaptConfig (its one default is shown)."""
    import json

    from ..embedcache.store import CacheError
    from ..evaluate import resolve_mask
    from ..router import run_adapt
    from ..router.presets import paper_adapt_config
    from ..router.report import print_results

    try:
        if budget is not None:
            if "budgets" in overrides:
                raise ValueError("give --budget or --budgets, not both")
            overrides["budgets"] = [budget]
        if no_baselines:
            overrides["methods"] = list(overrides.get("methods", ["default"])) + ["-baselines"]
        if set_options:
            overrides["options"] = parse_set(set_options, overrides.get("options", {}))
        if mask_from:
            overrides["mask_heads"] = sorted(set(overrides.get("mask_heads", [])) | set(resolve_mask(None, mask_from)))
        if paper_dataset is not None and not paper:
            raise ValueError("--paper-dataset chooses a --paper preset: give --paper too")
        if paper:
            config, note = paper_adapt_config(cache, run_dir, dataset=paper_dataset, **overrides)
            typer.echo(f"note: {note}", err=True)
        else:
            config = AdaptConfig(**overrides)
    except (CacheError, ValueError) as exc:
        fail(option_error(exc, AdaptConfig))
    try:
        results = run_adapt(cache, run_dir, out, config, log=lambda msg: typer.echo(msg, err=True), overwrite=overwrite)
    except (CacheError, ValueError, OSError) as exc:
        fail(error_line(exc, out))
    if as_json:
        typer.echo(json.dumps({"summary": results["summary"], "files": results["files"]}))
        return
    print_results(results)


def parse_set(items: list[str], options: dict) -> dict:
    """{method: {option: value}} from METHOD.OPTION=VALUE items (values read as YAML scalars or lists)."""
    import yaml

    options = {k: dict(v) for k, v in options.items()}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, name = key.strip().partition(".")
        if not (eq and dot and method and name):
            raise ValueError(f"--set {item!r}: write METHOD.OPTION=VALUE, e.g. drm.components=4")
        parsed = yaml.safe_load(value) if value.strip() else None
        if isinstance(parsed, str) and "," in parsed:
            parsed = [yaml.safe_load(v) for v in parsed.split(",")]
        options.setdefault(method, {})[name] = parsed
    return options


@app.command("methods")
def methods_cmd() -> None:
    """List the methods `micro adapt` scores, their groups and their options (`--set METHOD.OPTION=VALUE`)."""
    from dataclasses import fields

    from ..methods import GROUPS, REGISTRY
    from ..router.acquire import AcquireOptions
    from ..router.plugin import plugin_class
    from ._options import field_docs

    def show(key: str, cls: type) -> None:
        docs = field_docs(cls)
        for f in fields(cls):
            value = ",".join(str(v) for v in f.default) if isinstance(f.default, tuple) else f.default
            typer.echo(f"    --set {key}.{f.name}={value}   {' '.join(docs.get(f.name, '').split())}")

    seen = set()
    for name, entry in REGISTRY.items():
        cls = plugin_class(name)
        typer.echo(f"{name:14s} {entry.description}" + ("  [saw the scored users' labels]" if entry.saw_scored_labels else ""))
        key = cls.key or name
        if key not in seen:
            seen.add(key)
            show(key, cls.Options)
    typer.echo("acquire        the pair-asking rules of --acquire")
    show("acquire", AcquireOptions)
    typer.echo("groups: " + "; ".join(f"{g} = {','.join(m)}" for g, m in GROUPS.items()) + "; all = every method")
# ---- end stage-2 commands ----

