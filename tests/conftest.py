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


# ---- a real PostgreSQL server for the online-users tests (started with initdb + pg_ctl, no mocks) ----------
def _postgres_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/*/bin (newest first)."""
    import shutil

    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (bindir / "pg_ctl").exists() and (bindir / "initdb").exists():
            return bindir
    return None


@pytest.fixture(scope="session")
def postgres_server():
    """postgresql://postgres@127.0.0.1:PORT of a throwaway server in a temp folder; initdb refuses root, so as root
    it runs as the `postgres` user (runuser). Skips where no PostgreSQL binaries exist."""
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; apt-get install postgresql")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="micro-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as (initdb refuses root)")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh database on the test server (dropped after the test)."""
    import uuid

    import psycopg

    name = f"micro_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def users_url(request, tmp_path):
    """A users database URL: a SQLite file, then a database on a real Postgres server."""
    if request.param == "sqlite":
        return str(tmp_path / "users.db")
    return request.getfixturevalue("postgres_url")
