"""The terminal view of an `EmbedReport` (what `micro embed` prints)."""

from __future__ import annotations


def print_report(report) -> None:
    """Print an EmbedReport as `micro embed` shows it."""
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
    if report.invalid_rows:
        rows.append(("invalid rows skipped", ", ".join(f"{n} with {kind}" for kind, n in report.invalid_rows.items())))
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=False).print(table)
