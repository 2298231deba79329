import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

SHARED_DATA = Path(os.environ.get("MICRO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real datasets beside the checkout (../shared/data); tests that need them skip without them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set MICRO_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def planted_run(tmp_path):
    """`make(pairs, dim)` -> (cache, run): `micro simulate` a planted cache in tmp_path and fit a K = 3,
    2-epoch `micro fit-mixture` run on it (tmp_path/sim.h5, tmp_path/run), both through the CLI."""
    from typer.testing import CliRunner

    from micro.cli import app

    def make(pairs: int, dim: int) -> tuple[Path, Path]:
        cache, run = tmp_path / "sim.h5", tmp_path / "run"
        sim = CliRunner().invoke(app, ["simulate", "--out", str(cache), "--pairs", str(pairs), "--dim", str(dim)])
        assert sim.exit_code == 0, sim.output
        fit = CliRunner().invoke(app, ["fit-mixture", str(cache), "--out", str(run), "--k", "3", "--epochs", "2"])
        assert fit.exit_code == 0, fit.output
        return cache, run

    return make
