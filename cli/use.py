"""`micro score`, `micro export`, `micro serve`: use a trained model on text."""

from __future__ import annotations

from typing import List, Optional

import typer

from ._app import app, fail
from ._common import AttributeKey, ChosenKey, ContextKey, LimitOpt, PathOpt, PromptKey, RejectedKey, SplitKey, SplitOpt

RunArg = typer.Argument(..., help="run directory of `micro fit-mixture` (its cache names the backbone)")
RouterOpt = typer.Option(None, "--router", help="adapted router from `micro adapt` (e.g. OUT/routers/b50_s0.safetensors)")
AttributeOpt = typer.Option(None, "--attribute", help="score as this attribute's user with its micro-refine head (needs --router)")
MaskOpt = typer.Option(None, "--mask-heads", help="give these stage-1 heads zero weight, e.g. 3,7 (the others renormalise)")
MaskFromOpt = typer.Option(None, "--mask-from", help="also mask the heads flagged in this audit.json (`micro audit`); repeatable")
DeviceOpt = typer.Option(None, "--device", help="cuda, cpu ... (default: cuda when available)")
BackboneOpt = typer.Option(None, "--backbone", help="load the backbone from this path instead of the one the cache names (a local copy)")


def parse_mask(value: str | None, mask_from: list[str] | None = None) -> list[int] | None:
    """--mask-heads 3,7 and the heads flagged by every --mask-from audit.json, as one list (None: no mask)."""
    from ..evaluate import resolve_mask

    try:
        heads = resolve_mask(value, mask_from)
    except ValueError as exc:
        fail(exc)
    return heads or None


def load_model(run, router, attribute, mask, device, backbone=None, head=None, mask_from=None):
    from ..embedcache import CacheError
    from ..reward import PersonalizedRewardModel

    try:
        return PersonalizedRewardModel.from_run(run, router=router, attribute=attribute, heads_mask=parse_mask(mask, mask_from),
                                                device=device, head=head, backbone=backbone)
    except (CacheError, ValueError, OSError) as exc:
        fail(exc)


@app.command("score")
def score_cmd(
    run: str = RunArg,
    source: str = typer.Argument(..., help="pairs (prompt/chosen/rejected: any source `micro data` reads) or a file with prompt + response rows"),
    out: str = typer.Option(..., "--out", help="JSONL to write: one line per input row with its id and rewards"),
    router: Optional[str] = RouterOpt,
    attribute: Optional[str] = AttributeOpt,
    context: Optional[str] = typer.Option(None, "--context", help="score every row for this user context (replaces the rows' own)"),
    mask_heads: Optional[str] = MaskOpt,
    mask_from: Optional[List[str]] = MaskFromOpt,
    device: Optional[str] = DeviceOpt,
    backbone: Optional[str] = BackboneOpt,
    batch_tokens: Optional[int] = typer.Option(None, "--batch-tokens", help="padded tokens per batch (as `micro embed`)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    path: PathOpt = None,
    split: SplitOpt = None,
    prompt_key: PromptKey = "prompt",
    chosen_key: ChosenKey = "chosen",
    rejected_key: RejectedKey = "rejected",
    response_key: str = typer.Option("response", "--response-key", help="column holding the response (prompt + response rows)"),
    attribute_key: AttributeKey = "attribute",
    context_key: ContextKey = "context",
    split_key: SplitKey = "split",
    id_key: str = typer.Option("id", "--id-key", help="column holding each row's id (default: the row's position)"),
    limit: LimitOpt = None,
) -> None:
    """Score text with a trained model: pairs give margin, reward_chosen, reward_rejected (and the accuracy);
    prompt + response rows give reward."""
    import json
    import os
    from pathlib import Path

    from ..data import PreferenceDataError
    from ..reward.rows import read_rows

    out_path = Path(out)
    if out_path.exists() and not overwrite:
        fail(f"output {out_path} already exists; pass --overwrite to replace it")
    try:
        rows = read_rows(source, path=path, split=split, prompt_key=prompt_key, chosen_key=chosen_key, rejected_key=rejected_key,
                         response_key=response_key, attribute_key=attribute_key, context_key=context_key,
                         split_key=split_key, id_key=id_key, limit=limit)
    except (PreferenceDataError, OSError) as exc:
        fail(exc)
    for note in rows.notes:
        typer.echo(f"note: {note}", err=True)
    model = load_model(run, router, attribute, mask_heads, device, backbone, mask_from=mask_from)
    model.batch_tokens = batch_tokens
    contexts = [context] * len(rows) if context is not None else rows.contexts
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
                records = [{"id": i, "attribute": a, "margin": float(c - r), "reward_chosen": float(c), "reward_rejected": float(r)}
                           for i, a, c, r in zip(rows.ids, rows.attributes, chosen, rejected)]
            else:
                rewards = model.score(rows.prompts, rows.responses, contexts, on_batch=tick)
                records = [{"id": i, "reward": float(r)} for i, r in zip(rows.ids, rewards)]
        except ValueError as exc:
            fail(exc)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    os.replace(tmp, out_path)
    typer.echo(f"wrote {out_path}: {len(records)} rows")
    if rows.pairs and records:
        correct = {}
        for r in records:
            correct.setdefault(r["attribute"], []).append(r["margin"] > 0)
        overall = sum(sum(v) for v in correct.values()) / len(records)
        typer.echo(f"accuracy {overall:.3f} on {len(records)} pairs"
                   + ("".join(f"\n  {a}: {sum(v) / len(v):.3f} ({len(v)} pairs)" for a, v in correct.items()) if len(correct) > 1 else ""))


@app.command("export")
def export_cmd(
    run: str = RunArg,
    out: str = typer.Option(..., "--out", help="directory to write"),
    router: Optional[str] = RouterOpt,
    attribute: Optional[str] = AttributeOpt,
    head: Optional[int] = typer.Option(None, "--head", help="export stage-1 head N alone"),
    method: Optional[str] = typer.Option(None, "--method", help="`single`: RUN is a --method single run (its one head)"),
    fmt: str = typer.Option("hf", "--format", help="hf: a standard Hugging Face / sentence-transformers model for one fixed user; "
                                                    "micro: the routed model in micro's own format (PersonalizedRewardModel.from_pretrained)"),
    mask_heads: Optional[str] = MaskOpt,
    mask_from: Optional[List[str]] = MaskFromOpt,
    device: Optional[str] = DeviceOpt,
    backbone: Optional[str] = BackboneOpt,
    check: bool = typer.Option(True, "--check/--no-check", help="reload the export and compare its rewards with micro's on probe rows"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
) -> None:
    """Write one user's reward as a model that loads without micro (decoders: AutoModelForSequenceClassification;
    sentence-transformers encoders: SentenceTransformer + a Dense head), with a model card."""
    from ..reward.export import export_model

    if fmt not in ("hf", "micro"):
        fail(f"--format must be hf or micro, not {fmt!r}")
    if method is not None:
        import json
        from pathlib import Path

        if method != "single":
            fail(f"--method {method!r}: only `single` names a fixed user; use --head N or --router R --attribute A")
        cfg = Path(run) / "config.json"
        found = json.loads(cfg.read_text()).get("config", {}).get("method") if cfg.exists() else None
        if found != "single":
            fail(f"--method single: {run} is a {found!r} run, not a `micro fit-mixture --method single` run")
    model = load_model(run, router, attribute, mask_heads, device, backbone, head, mask_from=mask_from)
    try:
        if fmt == "micro":
            model.save_pretrained(out, overwrite=overwrite)
            typer.echo(f"wrote {out} (PersonalizedRewardModel.from_pretrained({out!r}))")
            return
        info = export_model(model, out, overwrite=overwrite, check=check)
    except (ValueError, FileExistsError, OSError, ImportError) as exc:
        fail(exc)
    typer.echo(f"wrote {out}: {info['class']}" + (f"; check: max |reward difference| {info['check']['max_abs_diff']:.3g}" if "check" in info else ""))


@app.command("serve")
def serve_cmd(
    run: str = RunArg,
    router: Optional[str] = RouterOpt,
    attribute: Optional[str] = AttributeOpt,
    context: Optional[str] = typer.Option(None, "--context", help="user context for requests that send none"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by default)"),
    port: int = typer.Option(5000, "--port", help="port (0: any free port)"),
    mask_heads: Optional[str] = MaskOpt,
    mask_from: Optional[List[str]] = MaskFromOpt,
    device: Optional[str] = DeviceOpt,
    backbone: Optional[str] = BackboneOpt,
    max_request_bytes: int = typer.Option(16 * 1024 * 1024, "--max-request-bytes", help="refuse larger requests (413)"),
) -> None:
    """Serve rewards over HTTP with OpenRLHF's remote reward-model protocol: POST /get_reward
    {"query": [...], "prompts": [...]} or {"prompts": [...], "responses": [...], "contexts": [...]}."""
    from ..reward.serve import serve

    if attribute is not None and context is not None:
        fail("--attribute and --context both pick the user; give one")
    model = load_model(run, router, attribute, mask_heads, device, backbone, mask_from=mask_from)
    model.backbone.model  # load the weights before the first request
    try:
        serve(model, host=host, port=port, context=context, max_request_bytes=max_request_bytes,
              log=lambda msg: typer.echo(msg, err=True))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc}")
