"""What the planted-cache benchmark scripts share: the --out / --workdir options, the work folder, and
printing (and saving) the tables followed by the time they took.

    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args()
    start = start_clock(args)
    with work_folder(args) as work:
        ...
    finish(tables(...) + "\\nsettings; ", args, start)

Scripts that write one JSON line per result (convergence.py, context_hedge.py) take their grid of
planted caches with `add_planted_grid_options` and use `row_writer` and `read_rows` for their --out and
--table files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from micro.heads.config import SIMULATION_REGIMES


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="also write the Markdown tables here")
    parser.add_argument("--workdir", default=None, help="keep caches and runs here (default: a temporary folder)")


def start_clock(args: argparse.Namespace) -> float:
    """Use --threads torch threads; the time the run starts."""
    torch.set_num_threads(args.threads)
    return time.perf_counter()


@contextlib.contextmanager
def work_folder(args: argparse.Namespace) -> Iterator[Path]:
    """--workdir, or a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(args.workdir or tmp)


def finish(text: str, args: argparse.Namespace, start: float) -> None:
    """Print `text` + the seconds since `start` on --threads thread(s); write the same to --out if given."""
    text += f"{time.perf_counter() - start:.0f} s on {args.threads} thread(s).\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def row_writer(out: str | None, rows: list) -> Callable[[dict], None]:
    """emit(row): keep the row in `rows`, print it to stderr as JSON, and append it to the file `out` if given."""
    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return emit


def read_rows(path: str) -> list[dict]:
    """The rows of a finished JSON-lines --out file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def add_planted_grid_options(parser: argparse.ArgumentParser, *, pairs: str, cache_help: str) -> None:
    """--regimes, --pairs, --dims, --seeds (the planted caches: simulate(regime, pairs, dim, seed)) and the
    repeatable --cache LABEL=PATH (an embedded cache instead)."""
    parser.add_argument("--regimes", default=",".join(SIMULATION_REGIMES))
    parser.add_argument("--pairs", default=pairs)
    parser.add_argument("--dims", default="64")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cache", action="append", default=[], metavar="LABEL=PATH", help=cache_help)
