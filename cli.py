"""The `micro` command: typer commands only. Each command parses, calls the library, prints."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="micro",
    help="Personalized reward modeling (MiCRo): embed once, then fit mixtures and adapt routers in seconds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Source options shared by every command that reads preference data (micro data preview, micro embed).
SourceArg = Annotated[str, typer.Argument(help="Recipe name (see `micro data recipes`), a .jsonl/.json/.parquet/.csv file or folder, or a hub dataset id.")]
PathOpt = Annotated[Optional[str], typer.Option("--path", help="Local files for a recipe or hub id (instead of downloading).")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Keep only this split.")]
PromptKey = Annotated[str, typer.Option("--prompt-key", help="Column holding the prompt.")]
ChosenKey = Annotated[str, typer.Option("--chosen-key", help="Column holding the preferred response.")]
RejectedKey = Annotated[str, typer.Option("--rejected-key", help="Column holding the other response.")]
AttributeKey = Annotated[str, typer.Option("--attribute-key", help="Column holding the attribute/group.")]
ContextKey = Annotated[str, typer.Option("--context-key", help="Column holding the context text.")]
SplitKey = Annotated[str, typer.Option("--split-key", help="Column holding the split name.")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="At most this many pairs per split.")]


def _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit):
    from .data import load_preferences

    return load_preferences(source, path=path, split=split, prompt_key=prompt_key, chosen_key=chosen_key,
                            rejected_key=rejected_key, attribute_key=attribute_key, context_key=context_key,
                            split_key=split_key, limit=limit)


# ---- data commands (micro data ...) ----
data_app = typer.Typer(help="Inspect preference data: built-in recipes, local files, hub ids.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("preview")
def data_preview(
    source: SourceArg,
    path: PathOpt = None,
    split: SplitOpt = None,
    prompt_key: PromptKey = "prompt",
    chosen_key: ChosenKey = "chosen",
    rejected_key: RejectedKey = "rejected",
    attribute_key: AttributeKey = "attribute",
    context_key: ContextKey = "context",
    split_key: SplitKey = "split",
    limit: LimitOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Load SOURCE into the preference table and show counts, distinct texts, a sample row and warnings."""
    import json

    from .data import PreferenceDataError, summarize

    try:
        df = _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit)
    except PreferenceDataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = summarize(df)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
        return
    _print_data_summary(summary)


@data_app.command("recipes")
def data_recipes() -> None:
    """List the built-in recipes."""
    from rich.console import Console
    from rich.table import Table

    from .data import describe_recipes

    table = Table("recipe", "what it loads")
    for name, doc in describe_recipes().items():
        table.add_row(name, doc)
    Console().print(table)


def _print_data_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    table = Table(title=f"{summary['source']}: {summary['pairs']} pairs")
    table.add_column("split")
    table.add_column("attribute")
    table.add_column("pairs", justify="right")
    for split, entry in summary["splits"].items():
        for attribute, n in entry["attributes"].items():
            table.add_row(split, attribute, str(n))
        table.add_row(f"[bold]{split}[/bold]", "[bold]all[/bold]", f"[bold]{entry['pairs']}[/bold]", end_section=True)
    console.print(table)
    console.print(f"distinct prompts: {summary['distinct_prompts']}   distinct responses: {summary['distinct_responses']}"
                  f"   distinct contexts: {summary['distinct_contexts']}")
    console.print(f"duplicates dropped: {summary['duplicates_dropped']}   invalid rows dropped: {summary['rows_dropped']}"
                  f"   sha256: {summary['sha256'][:16]}")
    if summary["sample"]:
        sample = Table(title="sample row", show_header=False)
        for key, value in summary["sample"].items():
            sample.add_row(key, Text("" if value is None else str(value)))  # Text: no markup parsing of data
        console.print(sample)
    for warning in summary["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False)
# ---- end data commands ----

# ---- embed commands ----
@app.command("embed")
def embed(
    source: SourceArg,
    model: str = typer.Option("Ray2333/GRM-Llama3.2-3B-rewardmodel-ft", "--model", help="Backbone: hub id or local path of a decoder reward/causal model or a sentence-transformers encoder; `minilm` = the packaged all-MiniLM-L6-v2."),
    out: str = typer.Option(..., "--out", help="The HDF5 cache to write (e.g. cache.h5)."),
    max_length: int = typer.Option(None, "--max-length", help="Truncate sequences over this many tokens (prompt first, from its start). Default: the model's maximum (4096 for decoders)."),
    batch_tokens: int = typer.Option(None, "--batch-tokens", help="Padded tokens per batch (rows x longest). Default 32768 on GPU, 2048 on CPU."),
    dtype: str = typer.Option(None, "--dtype", help="Compute dtype: bf16, fp16 or fp32 (default bf16 on GPU, fp32 on CPU). The cache stores float16."),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1, cpu ... (default: cuda when available; under torchrun each rank takes its local GPU)."),
    context_in_sequence: bool = typer.Option(False, "--context-in-sequence", help="Also embed (context + prompt, response) for pairs with a context."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the hub repository."),
    path: PathOpt = None,
    split: SplitOpt = None,
    prompt_key: PromptKey = "prompt",
    chosen_key: ChosenKey = "chosen",
    rejected_key: RejectedKey = "rejected",
    attribute_key: AttributeKey = "attribute",
    context_key: ContextKey = "context",
    split_key: SplitKey = "split",
    limit: LimitOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Embed every distinct (prompt, response), prompt and (context + prompt) of SOURCE once into an HDF5 cache.

    Crash-safe and resumable: rerun the same command after a crash to finish; a finished cache is
    left alone. Several GPUs: `torchrun --nproc_per_node=N -m micro.cli embed ...` (same flags).
    """
    import json
    import os

    from .data import PreferenceDataError, table_sha256
    from .embedcache import CacheError, embed_table

    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        df = _load_source(source, path, split, prompt_key, chosen_key, rejected_key, attribute_key, context_key, split_key, limit)
        report = embed_table(df, model=model, out=out, max_length=max_length, batch_tokens=batch_tokens,
                             dtype=dtype, device=device, context_in_sequence=context_in_sequence,
                             trust_remote_code=trust_remote_code, source_sha256=table_sha256(df),
                             log=lambda msg: typer.echo(msg, err=True))
    except (PreferenceDataError, CacheError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not rank0:
        return
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    elif not report.noop:
        _print_embed_report(report)


def _print_embed_report(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.out}: {report.n_pairs} pairs embedded with {report.model_id}", show_header=False)
    rows = [
        ("distinct sequences", f"{report.sequences:,} (from {report.pair_references:,} pair references, dedup x{report.dedup_factor})"),
        ("distinct prompts", f"{report.prompts:,}"),
        ("context prompts / context sequences", f"{report.context_prompts:,} / {report.context_sequences:,}"),
        ("forward passes", f"{report.forward_sequences:,} in {report.batches:,} batches"
         + (f" ({report.resumed_batches} resumed)" if report.resumed_batches else "")
         + (f", {report.reused_from_cache:,} rows reused from the old cache" if report.reused_from_cache else "")),
        ("tokens", f"{report.tokens:,} real, padding {100 * report.padding_fraction:.1f} %"),
        ("truncated (max length %d)" % report.max_length,
         f"{report.truncated_prompts} prompts, {report.truncated_responses} responses, {report.truncated_router_inputs} router inputs"),
        ("speed", f"{report.sequences_per_s:,.1f} seq/s, {report.tokens_per_s:,.0f} tok/s"
         + (f" over {report.world_size} ranks" if report.world_size > 1 else "")),
        ("wall time", f"{report.seconds:.1f} s"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=False).print(table)
# ---- end embed commands ----

# ---- stage-1 commands (fit-mixture, simulate) ----
def _stage1_fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("fit-mixture")
def fit_mixture_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) from `micro embed` or `micro simulate`"),
    out: str = typer.Option(..., "--out", help="run directory to write (model.safetensors, config.json, metrics.json)"),
    method: str = typer.Option(None, help="micro | single | static | ensemble  [default: micro]"),
    k: int = typer.Option(None, help="number of heads  [default: 10]"),
    alpha: float = typer.Option(None, help="weight of the router regulariser (eq. 5)  [default: 0.5]"),
    router: str = typer.Option(None, help="mlp | linear  [default: mlp]"),
    hidden: int = typer.Option(None, help="MLP router width  [default: 128]"),
    epochs: int = typer.Option(None, help="passes over the train pairs  [default: 4]"),
    lr: float = typer.Option(None, help="peak AdamW learning rate  [default: 2e-3]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per step  [default: 32]"),
    seed: int = typer.Option(None, help="random seed  [default: 0]"),
    device: str = typer.Option(None, help="cpu | cuda  [default: cpu]"),
    router_input: str = typer.Option(None, "--router-input", help="auto | prompt | context  [default: auto = context when every pair has one]"),
    balance: str = typer.Option(None, help="batch (batch-mean balance) | example (eq. 4)  [default: batch]"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage 1: --router-input prompt --balance example"),
    eval_split: str = typer.Option("test", "--eval-split", help="split to evaluate on"),
) -> None:
    """Stage 1: fit K BT heads + router on a cache and print per-head accuracy per attribute.

    Defaults live in micro.heads.MixtureConfig; flags given here override them."""
    from .embedcache.store import CacheError
    from .heads import MixtureConfig, run_fit_mixture
    from .heads.report import print_report

    given = dict(method=method, k=k, alpha=alpha, router=router, hidden=hidden, epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, device=device, router_input=router_input, balance=balance)
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        config = MixtureConfig.paper(**overrides) if paper else MixtureConfig(**overrides)
        metrics = run_fit_mixture(cache, out, config, eval_split=eval_split)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        _stage1_fail(str(exc))
    print_report(metrics)


@app.command("simulate")
def simulate_cmd(
    out: str = typer.Option(..., "--out", help="cache file to write (.h5)"),
    groups: int = typer.Option(3, help="planted annotator groups"),
    dim: int = typer.Option(64, help="embedding dimension"),
    pairs: int = typer.Option(6000, help="labeled pairs in all"),
    seed: int = typer.Option(0, help="random seed"),
    regime: str = typer.Option("prompt", help="prompt (the prompt hints at the group: the paper's setting) | shared (the same pairs labelled by every group, conflicting, independent of the prompt)"),
    conflict: float = typer.Option(None, help="fraction of the groups' mean direction removed (0..1)  [default: 1 for shared, 0 for prompt]"),
) -> None:
    """Write a cache from a planted mixture of BT models (truth stored in the file) to test stage 1 on."""
    from .heads.simulate import bayes_accuracy, simulate

    try:
        truth = simulate(out, groups=groups, dim=dim, pairs=pairs, seed=seed, regime=regime, conflict=conflict)
    except ValueError as exc:
        _stage1_fail(str(exc))
    typer.echo(
        f"wrote {out}: {len(truth.pair_group)} pairs, {groups} groups, dim {dim}, regime {regime}; "
        f"Bayes accuracy with context {bayes_accuracy(truth, with_context=True):.3f}, "
        f"prompt only {bayes_accuracy(truth, with_context=False):.3f}"
    )


# ---- end stage-1 commands ----

# ---- stage-2 commands (adapt) ----
@app.command("adapt")
def adapt_cmd(
    cache: str = typer.Argument(..., help="embedding cache (.h5) with contexts: budget pairs are drawn from its train split"),
    run_dir: str = typer.Argument(..., help="stage-1 `micro fit-mixture --method micro` run directory"),
    out: str = typer.Option(..., "--out", help="output directory (results.json/csv, table.md, budget_curve.png, routers/)"),
    budget: int = typer.Option(None, "--budget", help="labelled context pairs per attribute (default 50)"),
    budgets: str = typer.Option(None, "--budgets", help="comma-separated budgets for a sweep, e.g. 10,25,50,100,150"),
    seeds: int = typer.Option(None, "--seeds", help="independent repetitions (mean ± std)  [default: 5]"),
    seed: int = typer.Option(None, "--seed", help="first seed  [default: 0]"),
    tau: float = typer.Option(None, "--tau", help="Hedge temperature of eq. 6  [default: 1.0; --paper: 1e-3]"),
    epochs: int = typer.Option(None, "--epochs", help="router epochs (soft labels recomputed each epoch)  [default: 10]"),
    batch_size: int = typer.Option(None, "--batch-size", help="pairs per router step  [default: 32]"),
    lr: float = typer.Option(None, "--lr", help="router AdamW learning rate  [default: 2e-3]"),
    hyre_shots: int = typer.Option(None, "--hyre-shots", help="labelled test pairs per attribute for HyRe / MiCRo-HyRe  [default: 16]"),
    hyre_variant: str = typer.Option(None, "--hyre-variant", help="posterior | best  [default: posterior]"),
    eval_cache: str = typer.Option(None, "--eval-cache", help="evaluate on this cache's test split (same backbone)"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="skip the stage-1 baseline fits (single, static, ensemble, hyre)"),
    device: str = typer.Option(None, help="cpu | cuda  [default: cpu]"),
    paper: bool = typer.Option(False, "--paper", help="the paper's stage 2: --tau 1e-3"),
    as_json: bool = typer.Option(False, "--json", help="print results.json's summary as JSON instead of the table"),
) -> None:
    """Stage 2: adapt the stage-1 router to user contexts (Hedge soft labels, paper eq. 6 / Algorithm 1)
    over budgets x seeds, and score it beside the baselines on the same test pairs."""
    import json

    from .embedcache.store import CacheError
    from .router import AdaptConfig, run_adapt
    from .router.report import table_rows

    try:
        if budget is not None and budgets is not None:
            raise ValueError("give --budget or --budgets, not both")
        values = [int(b) for b in budgets.split(",") if b.strip()] if budgets else ([budget] if budget is not None else None)
        given = dict(budgets=values, seeds=seeds, seed=seed, tau=tau, epochs=epochs, batch_size=batch_size, lr=lr,
                     hyre_shots=hyre_shots, hyre_variant=hyre_variant, eval_cache=eval_cache, device=device)
        overrides = {name: value for name, value in given.items() if value is not None}
        overrides["baselines"] = not no_baselines
        config = AdaptConfig.paper(**overrides) if paper else AdaptConfig(**overrides)
        results = run_adapt(cache, run_dir, out, config, log=lambda msg: typer.echo(msg, err=True))
    except (CacheError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"summary": results["summary"], "files": results["files"]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Stage-2 accuracy on {results['eval_cache']} (mean ± std over {config.seeds} seeds)")
    table.add_column("Method")
    for name in results["attributes"] + ["Average"]:
        table.add_column(name, justify="right")
    for label, cells in table_rows(results):
        table.add_row(label, *cells)
    console = Console()
    console.print(table)
    for note in results["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False)
    for name, path in results["files"].items():
        console.print(f"{name}: {path}", markup=False)
# ---- end stage-2 commands ----

# ---- demo command ----
@app.command("demo")
def demo_cmd(
    out: str = typer.Option("micro-demo", "--out", help="folder for the cache, runs, results and report.md / report.html"),
    budgets: str = typer.Option("5,10,25,50", "--budgets", help="stage-2 labelled pairs per group, comma-separated"),
    seeds: int = typer.Option(3, "--seeds", help="stage-2 repetitions (mean ± std)"),
    n_prompts: int = typer.Option(None, "--n-prompts", help="cut the demo data to this many prompts (quick look)"),
    model: str = typer.Option("minilm", "--model", help="backbone to embed with (default: the packaged MiniLM, offline)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's exact stage-1 and stage-2 configuration"),
) -> None:
    """Run the whole pipeline offline on the built-in demo data: embed -> fit-mixture -> adapt -> report."""
    from rich.console import Console
    from rich.table import Table

    from .demo import DemoConfig, run_demo
    from .demo.report import HEADLINE, headline_rows

    config = DemoConfig(out=out, model=model, n_prompts=n_prompts, seeds=seeds, paper=paper,
                        budgets=[int(b) for b in budgets.split(",") if b.strip()])
    summary = run_demo(config, log=lambda msg: typer.echo(msg, err=True))
    header, rows, budget = headline_rows(summary, short=True)
    console = Console()
    width = 4 + max(len(r[0]) for r in rows) + sum(3 + max(len(h), 11) for h in header[1:])
    if console.width < width:  # a narrow terminal: means only, so no cell is cut
        rows = [[r[0]] + [c.split("±")[0] for c in r[1:]] for r in rows]
    title = f"Demo: test accuracy per user group, {budget} labelled pairs per group, {seeds} seeds"
    table = Table(title=title + (" (mean ± std)" if console.width >= width else " (mean; ± std in report.md)"))
    table.add_column(header[0], no_wrap=True, min_width=max(len(r[0]) for r in rows))
    for name in header[1:]:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("methods: " + "; ".join(f"{m}: {label}" for m, label in HEADLINE), markup=False)
    console.print(f"timings: {summary['timings_s']}", markup=False)
    for kind, path in summary["report"].items():
        console.print(f"report ({kind}): {path}", markup=False)
# ---- end demo command ----


def main() -> None:
    app()


if __name__ == "__main__":
    main()
