"""Per-user stage-2 state in a database: what Hedge needs to score for a user who sends feedback over time.

    store = UserStore.open("users.db", run=run_fingerprint(run_dir), heads=K)     # SQLite file (WAL)
    store = UserStore.open("postgresql://user@host/db", run=..., heads=K)        # Postgres (psycopg 3)
    state = store.add_pairs("alice", losses)        # losses [n, K]: head_losses of her n new pairs
    state.log_weights(rate)                         # hedge_log_weights(sum of losses, pairs, rate)

A user's state is the sufficient statistic of Hedge: each head's summed BT loss (float64) and the pair
count, plus their context if they gave one and the time of the last update. Weights are derived, never
stored, so replaying a user's pairs one at a time gives the batch weights exactly, in any order.

One code path serves both databases: plain parameterised SQL through a thin adapter (placeholder style,
the statement that opens a write transaction, the row-lock suffix). An update is one transaction: insert
the user if absent, read the row under a write lock (SQLite: BEGIN IMMEDIATE; Postgres: SELECT ... FOR
UPDATE), write the new sums, commit before the caller replies. Raw text is kept only with keep_text.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

#: Longest user id (characters); ids are opaque strings otherwise.
MAX_USER_ID = 128
SCHEMA_VERSION = "1"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS micro_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS micro_users (user_id TEXT PRIMARY KEY, losses TEXT NOT NULL, pairs BIGINT NOT NULL, "
    "context TEXT, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS micro_pairs (user_id TEXT NOT NULL, seq BIGINT NOT NULL, prompt TEXT NOT NULL, "
    "chosen TEXT NOT NULL, rejected TEXT NOT NULL, context TEXT, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (user_id, seq))",
)


#: the Postgres advisory lock held while the schema is created (any fixed 64-bit number)
SCHEMA_LOCK = 0x6D6963726F


class StoreError(RuntimeError):
    """A database that cannot be used: wrong run, unreachable server, missing driver (one line)."""


def check_user_id(user: Any) -> str:
    """`user` if it is a usable id (a non-empty string of at most MAX_USER_ID printable characters)."""
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if len(user) > MAX_USER_ID:
        raise ValueError(f"user id is {len(user)} characters; the limit is {MAX_USER_ID}")
    if not user.isprintable():
        raise ValueError("user id must be printable characters (no control characters)")
    return user


@dataclass
class UserState:
    """One user's Hedge state: summed per-head losses, pair count, optional context, last update (unix time)."""

    user: str
    losses: np.ndarray  # [K] float64
    pairs: int
    context: str | None
    updated_at: float

    def log_weights(self, rate: float):
        """[K] Hedge log-weights (torch float64), the offset added to the user's routing logits."""
        import torch

        from ..router.hedge import hedge_log_weights

        return hedge_log_weights(torch.from_numpy(self.losses.astype(np.float64)), self.pairs, rate)

    def weights(self, rate: float, masked: Sequence[int] = ()) -> list[float]:
        """Hedge weights over the heads from feedback alone (masked heads 0)."""
        lw = self.log_weights(rate).clone()
        lw[list(masked)] = -math.inf
        return [float(w) for w in lw.softmax(-1)]

    def to_dict(self, rate: float, masked: Sequence[int] = ()) -> dict[str, Any]:
        return {"user": self.user, "pairs": self.pairs, "weights": self.weights(rate, masked),
                "losses": [float(x) for x in self.losses], "context": self.context, "updated_at": self.updated_at}


def run_fingerprint(run_dir: str | Path) -> str:
    """sha256 of the run's heads (model.safetensors): the state is valid only for the heads it was summed on."""
    digest = hashlib.sha256()
    with open(Path(run_dir) / "model.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- the adapter: what differs between SQLite and Postgres ----------------------------------------
class _Dialect:
    name = "sqlite"
    begin_write = "BEGIN IMMEDIATE"  # takes the write lock at once: the read below is already serialised
    lock = ""
    integrity_errors: tuple = (sqlite3.IntegrityError,)

    def sql(self, query: str) -> str:
        return query

    def connect(self, url: str):
        conn = sqlite3.connect(url, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        for attempt in range(20):  # entering WAL takes an exclusive lock that the busy timeout does not wait for
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        conn.execute("PRAGMA synchronous = FULL")  # the commit is on disk before the reply
        conn.execute("PRAGMA secure_delete = ON")  # a forgotten user's bytes are overwritten, not left in free pages
        return conn

    def after_delete(self, conn) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old page images of the user leave the WAL

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        """Held while the schema is created (SQLite: its DDL takes the write lock, and a race is retried)."""
        yield


class _Postgres(_Dialect):
    name = "postgres"
    begin_write = "BEGIN"
    lock = " FOR UPDATE"

    def __init__(self):
        try:
            import psycopg
        except ImportError:
            raise StoreError("a postgresql:// --users database needs psycopg 3: pip install 'micro[serve]'") from None
        self.psycopg = psycopg
        self.integrity_errors = (psycopg.errors.IntegrityError,)

    def sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def connect(self, url: str):
        try:
            return self.psycopg.connect(url, autocommit=True)
        except self.psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to {_redact(url)}: {str(exc).strip().splitlines()[0]}") from None

    def after_delete(self, conn) -> None:
        conn.execute("VACUUM micro_users")
        conn.execute("VACUUM micro_pairs")

    @contextmanager
    def schema_lock(self, conn) -> Iterator[None]:
        """An advisory lock of this database: concurrent CREATE TABLE IF NOT EXISTS raise DuplicateObject."""
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def _redact(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("@")
    return (head.rsplit(":", 1)[0] + ":***@" + tail) if sep and head.count(":") >= 2 else url


class UserStore:
    """Users' Hedge states in SQLite or Postgres; thread-safe (a small pool of connections)."""

    def __init__(self, url: str, dialect: _Dialect, *, run: str, heads: int, keep_text: bool = False, pool: int = 8):
        self.url, self.dialect, self.run, self.heads, self.keep_text = url, dialect, run, int(heads), keep_text
        self._pool: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool)
        self._all: list = []
        self._lock = threading.Lock()
        with self._conn() as conn:
            self._create(conn)
            self._check_run(conn)

    @classmethod
    def open(cls, url: str | Path, *, run: str, heads: int, keep_text: bool = False) -> "UserStore":
        """A store at `url`: postgresql://... (or postgres://...) or a SQLite file path (sqlite:///path also)."""
        url = str(url)
        if url.startswith(("postgresql://", "postgres://")):
            return cls(url, _Postgres(), run=run, heads=heads, keep_text=keep_text)
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
        if "://" in path:
            raise StoreError(f"--users {url}: give a SQLite file path or a postgresql:// URL")
        if not Path(path).parent.exists():
            raise StoreError(f"--users {url}: folder {Path(path).parent} does not exist")
        return cls(path, _Dialect(), run=run, heads=heads, keep_text=keep_text)

    # ---- connections --------------------------------------------------------------------------
    @contextmanager
    def _conn(self) -> Iterator[Any]:
        self._slots.acquire()
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self.dialect.connect(self.url)
                with self._lock:
                    self._all.append(conn)
            try:
                yield conn
            finally:
                self._pool.put(conn)
        finally:
            self._slots.release()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction, committed on success and rolled back on any error."""
        with self._conn() as conn:
            conn.execute(self.dialect.begin_write)
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _exec(self, conn, query: str, params: Sequence[Any] = ()):
        return conn.execute(self.dialect.sql(query), tuple(params))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 (closing what may already be gone)
                    pass
            self._all.clear()

    # ---- schema and run identity ----------------------------------------------------------------
    def _create(self, conn) -> None:
        with self.dialect.schema_lock(conn):
            for attempt in range(3):  # two servers creating the schema at once: one wins, the other retries
                try:
                    for ddl in SCHEMA:
                        self._exec(conn, ddl)
                    return
                except self.dialect.integrity_errors:
                    time.sleep(0.1 * (attempt + 1))
        raise StoreError(f"cannot create micro's tables in {_redact(self.url)}")

    def _check_run(self, conn) -> None:
        wanted = {"schema": SCHEMA_VERSION, "run": self.run, "heads": str(self.heads)}
        for key, value in wanted.items():
            self._exec(conn, "INSERT INTO micro_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))
        found = dict(self._exec(conn, "SELECT key, value FROM micro_meta").fetchall())
        if found.get("run") != self.run or found.get("heads") != str(self.heads):
            raise StoreError(f"--users {_redact(self.url)} holds the users of another run (heads {found.get('run', '?')[:12]}, "
                             f"K={found.get('heads')}); this run's heads are {self.run[:12]} (K={self.heads}): serve that run or use another database")
        if found.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"--users {_redact(self.url)} has schema version {found.get('schema')}; this micro writes {SCHEMA_VERSION}")

    # ---- reading ------------------------------------------------------------------------------
    def get(self, user: str) -> UserState | None:
        return self.get_many([user]).get(user)

    def get_many(self, users: Sequence[str]) -> dict[str, UserState]:
        """{user: state} of the known users among `users`."""
        wanted = sorted(set(users))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self._conn() as conn:
            rows = self._exec(conn, f"SELECT user_id, losses, pairs, context, updated_at FROM micro_users WHERE user_id IN ({marks})",
                              wanted).fetchall()
        return {r[0]: _state(r) for r in rows}

    def count(self) -> int:
        with self._conn() as conn:
            return int(self._exec(conn, "SELECT COUNT(*) FROM micro_users").fetchone()[0])

    def pairs_of(self, user: str) -> list[dict[str, Any]]:
        """The raw pairs kept for `user` (only with keep_text), in arrival order."""
        with self._conn() as conn:
            rows = self._exec(conn, "SELECT seq, prompt, chosen, rejected, context, created_at FROM micro_pairs WHERE user_id = ? "
                                    "ORDER BY seq", (user,)).fetchall()
        return [{"seq": int(r[0]), "prompt": json.loads(r[1]), "chosen": r[2], "rejected": r[3], "context": r[4], "created_at": r[5]}
                for r in rows]

    # ---- writing ------------------------------------------------------------------------------
    def add_pairs(self, user: str, losses: np.ndarray, *, context: str | None = None,
                  texts: Sequence[tuple[Any, str, str, str | None]] | None = None) -> UserState:
        """Add `losses` [n, K] (head_losses of the user's n new pairs) to the user's sums in one transaction;
        `context` (if given) replaces theirs; `texts` (prompt, chosen, rejected, context) are kept only with
        keep_text. Returns the committed state."""
        check_user_id(user)
        losses = np.asarray(losses, dtype=np.float64).reshape(-1, self.heads)
        if not np.isfinite(losses).all():
            raise ValueError("head losses must be finite")
        now = time.time()
        with self._write() as conn:
            self._exec(conn, "INSERT INTO micro_users (user_id, losses, pairs, context, updated_at) VALUES (?, ?, 0, NULL, ?) "
                             "ON CONFLICT (user_id) DO NOTHING", (user, _encode(np.zeros(self.heads)), now))
            row = self._exec(conn, f"SELECT user_id, losses, pairs, context, updated_at FROM micro_users WHERE user_id = ?{self.dialect.lock}",
                             (user,)).fetchone()
            old = _state(row)
            state = UserState(user, old.losses + losses.sum(0), old.pairs + len(losses),
                              old.context if context is None else context, now)
            self._exec(conn, "UPDATE micro_users SET losses = ?, pairs = ?, context = ?, updated_at = ? WHERE user_id = ?",
                       (_encode(state.losses), state.pairs, state.context, now, user))
            if self.keep_text and texts:
                rows = [(user, old.pairs + i, json.dumps(p), c, r, ctx, now) for i, (p, c, r, ctx) in enumerate(texts)]
                for params in rows:
                    self._exec(conn, "INSERT INTO micro_pairs (user_id, seq, prompt, chosen, rejected, context, created_at) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?)", params)
        return state

    def delete(self, user: str) -> bool:
        """Forget `user`: their row and kept pairs are deleted (and their bytes scrubbed); False if unknown."""
        with self._write() as conn:
            self._exec(conn, "DELETE FROM micro_pairs WHERE user_id = ?", (user,))
            gone = self._exec(conn, "DELETE FROM micro_users WHERE user_id = ?", (user,)).rowcount
        with self._conn() as conn:
            self.dialect.after_delete(conn)
        return gone > 0


def _encode(losses: np.ndarray) -> str:
    """float64 sums as JSON (repr round-trips every float64 exactly; readable in the database)."""
    return json.dumps([float(x) for x in losses])


def _state(row) -> UserState:
    return UserState(row[0], np.asarray(json.loads(row[1]), dtype=np.float64), int(row[2]), row[3], float(row[4]))


__all__ = ["MAX_USER_ID", "StoreError", "UserState", "UserStore", "check_user_id", "run_fingerprint"]
