"""`micro score`, `micro export`, `micro serve`: use a trained model on text."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..data.columns import ID_KEY, RESPONSE_KEY, ColumnKeys
from ..reward.config import ExportConfig, ScoreConfig, ServeConfig
from ._app import app, fail
from ._common import (AttributeKey, ChosenKey, ContextKey, LimitOpt, PathOpt, PromptKey, RejectedKey, SplitKey, SplitOpt,
                      option_error)
from ._options import config_options

RunArg = typer.Argument(..., help="run directory of `micro fit-mixture` (its cache names the backbone)")
MaskFromOpt = typer.Option(None, "--mask-from", help="also mask the heads flagged in this audit.json (`micro audit`); repeatable")
OverwriteOutOpt = typer.Option(False, "--overwrite", help="replace an existing --out")


def resolve_config(cls, overrides: dict, mask_from: list[str] | None):
    """`cls(**overrides)` with the heads flagged by every --mask-from audit.json added to mask_heads; a bad
    value is one line naming its flag."""
    from ..evaluate import resolve_mask

    try:
        if mask_from:
            overrides["mask_heads"] = sorted(set(overrides.get("mask_heads", [])) | set(resolve_mask(None, mask_from)))
        return cls(**overrides)
    except (ValueError, OSError) as exc:
        fail(option_error(exc, cls))


def load_model(run: str, config):
    """The model `config` (a reward.config.ModelConfig) picks from `run`; a load error is one line."""
    from ..embedcache import CacheError

    try:
        return config.load_model(run)
    except (CacheError, ValueError, OSError) as exc:
        fail(exc)


@app.command("score")
@config_options(ScoreConfig)
def score_cmd(
    run: str = RunArg,
    source: str = typer.Argument(..., help="pairs (prompt/chosen/rejected: any source `micro data` reads) or a file with prompt + response rows"),
    out: str = typer.Option(..., "--out", help="JSONL to write: one line per input row with its id and rewards"),
    mask_from: Optional[List[str]] = MaskFromOpt,
    overwrite: bool = OverwriteOutOpt,
    path: PathOpt = None,
    split: SplitOpt = None,
    prompt_key: PromptKey = ColumnKeys.prompt,
    chosen_key: ChosenKey = ColumnKeys.chosen,
    rejected_key: RejectedKey = ColumnKeys.rejected,
    response_key: str = typer.Option(RESPONSE_KEY, "--response-key", help="column holding the response (prompt + response rows)"),
    attribute_key: AttributeKey = ColumnKeys.attribute,
    context_key: ContextKey = ColumnKeys.context,
    split_key: SplitKey = ColumnKeys.split,
    id_key: str = typer.Option(ID_KEY, "--id-key", help="column holding each row's id (default: the row's position)"),
    limit: LimitOpt = None,
    overrides: dict = None,
) -> None:
    """Score text with a trained model: pairs give margin, reward_chosen, reward_rejected (and the accuracy);
    prompt + response rows give reward.

    Every option after --config is a field of micro.reward.ScoreConfig (its one default is shown)."""
    import json
    from pathlib import Path

    from ..outputs import OutputError, writing_file

    config = resolve_config(ScoreConfig, overrides, mask_from)
    out_path = Path(out)
    reading = dict(path=path, split=split, prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                   response_key=response_key, attribute_key=attribute_key, context_key=context_key, split_key=split_key,
                   id_key=id_key, limit=limit)
    try:  # the output is refused before any work, and locked until it is written
        with writing_file(out_path, overwrite=overwrite, what="scores", inputs=[run, source, path, config.router]) as tmp:
            rows, records = _score(run, source, reading, config)
            tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    except OutputError as exc:
        fail(exc)
    typer.echo(f"wrote {out_path}: {len(records)} rows")
    if rows.pairs and records:
        correct = {}
        for r in records:
            correct.setdefault(r["attribute"], []).append(r["margin"] > 0)
        overall = sum(sum(v) for v in correct.values()) / len(records)
        typer.echo(f"accuracy {overall:.3f} on {len(records)} pairs"
                   + ("".join(f"\n  {a}: {sum(v) / len(v):.3f} ({len(v)} pairs)" for a, v in correct.items()) if len(correct) > 1 else ""))


def _score(run: str, source: str, reading: dict, config):
    """(rows, records) of `micro score`: the rows of `source` scored by the model of `run`."""
    from ..data import PreferenceDataError
    from ..reward.rows import read_rows

    try:
        rows = read_rows(source, **reading)
    except (PreferenceDataError, OSError) as exc:
        fail(exc)
    for note in rows.notes:
        typer.echo(f"note: {note}", err=True)
    model = load_model(run, config)
    contexts = [config.context] * len(rows) if config.context is not None else rows.contexts
    if model.router_input == "context" and not any(contexts):
        typer.echo("note: no row has a context (give --context or a context column): the router reads the prompt alone", err=True)

    from tqdm.auto import tqdm

    with tqdm(unit="seq", desc="score", dynamic_ncols=True) as bar:
        def tick(done: int, total: int) -> None:
            bar.total = total
            bar.update(done)

        try:
            if rows.pairs:
                both = model.score(rows.prompts * 2, rows.chosen + rows.rejected, contexts * 2, on_batch=tick)
                chosen, rejected = both[: len(rows)], both[len(rows) :]
                return rows, [{"id": i, "attribute": a, "margin": float(c - r), "reward_chosen": float(c), "reward_rejected": float(r)}
                              for i, a, c, r in zip(rows.ids, rows.attributes, chosen, rejected)]
            rewards = model.score(rows.prompts, rows.responses, contexts, on_batch=tick)
            return rows, [{"id": i, "reward": float(r)} for i, r in zip(rows.ids, rewards)]
        except ValueError as exc:
            fail(exc)


@app.command("export")
@config_options(ExportConfig)
def export_cmd(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="directory to write"),
    mask_from: Optional[List[str]] = MaskFromOpt,
    overwrite: bool = OverwriteOutOpt,
    overrides: dict = None,
) -> None:
    """Write one user's reward as a model that loads without micro (decoders: AutoModelForSequenceClassification;
    sentence-transformers encoders: SentenceTransformer + a Dense head), with a model card and the resolved
    config (OUT/micro_export.json, a valid --config).

    Every option after --config is a field of micro.reward.ExportConfig (its one default is shown)."""
    from ..embedcache import CacheError
    from ..reward.export import run_export

    config = resolve_config(ExportConfig, overrides, mask_from)
    try:
        info = run_export(run, out, config, overwrite=overwrite)
    except (CacheError, ValueError, OSError, ImportError) as exc:
        fail(exc)
    if config.format == "micro":
        typer.echo(f"wrote {out} (PersonalizedRewardModel.from_pretrained({out!r}))")
        return
    typer.echo(f"wrote {out}: {info['class']}" + (f"; check: max |reward difference| {info['check']['max_abs_diff']:.3g}" if "check" in info else ""))


@app.command("serve")
@config_options(ServeConfig)
def serve_cmd(
    run: str = RunArg,
    mask_from: Optional[List[str]] = MaskFromOpt,
    overrides: dict = None,
) -> None:
    """Serve rewards over HTTP with OpenRLHF's remote reward-model protocol: POST /get_reward
    {"query": [...], "prompts": [...]} or {"prompts": [...], "responses": [...], "contexts": [...]}; with
    --users, users who send feedback (POST /feedback) are personalized online (docs/online.md).

    Every option after --config is a field of micro.reward.ServeConfig (its one default is shown)."""
    from ..reward.serve import serve
    from ..reward.users import StoreError

    config = resolve_config(ServeConfig, overrides, mask_from)
    model = load_model(run, config)
    model.backbone.model  # load the weights before the first request
    try:
        serve(model, host=config.host, port=config.port, context=config.context, max_request_bytes=config.max_request_bytes,
              log=lambda msg: typer.echo(msg, err=True), users=config.users, keep_text=config.keep_text, token=config.token,
              batch_window_ms=config.batch_window_ms, max_batch_rows=config.max_batch_rows)
    except StoreError as exc:
        fail(exc)
    except ValueError as exc:
        fail(exc)
    except OSError as exc:
        fail(f"cannot listen on {config.host}:{config.port}: {exc}")
