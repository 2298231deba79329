"""The online users' store (reward/users.py) on a real SQLite file and a real Postgres server (started by the
test with initdb + pg_ctl; skipped where there are no PostgreSQL binaries): the state is Hedge's sufficient
statistic, concurrent writers lose no update, a killed writer leaves old or new state (never a mix), SQL is
parameterised, a forgotten user leaves nothing, and a database of another run is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from micro.reward.users import MAX_USER_ID, StoreError, UserStore, check_user_id
from micro.router.config import AdaptConfig
from micro.router.hedge import context_log_weights

K = 3
RATE = AdaptConfig().context_rate


def _open(url, **kw) -> UserStore:
    return UserStore.open(url, run="run-a", heads=K, **kw)


def test_state_replayed_one_pair_at_a_time_equals_batch_hedge(users_url):
    rng = np.random.default_rng(0)
    losses = rng.exponential(size=(30, K))
    store = _open(users_url)
    try:
        for i in rng.permutation(30):  # any order: the state is summed losses
            state = store.add_pairs("u", losses[i : i + 1])
        assert state.pairs == 30 and store.get("u").pairs == 30
        batch = context_log_weights(torch.from_numpy(losses), RATE)
        np.testing.assert_allclose(store.get("u").log_weights(RATE).numpy(), batch.numpy(), atol=1e-12)
    finally:
        store.close()


def test_concurrent_writers_lose_no_update(users_url):
    """8 clients (each its own connections) add 50 pairs each to one user at once = a sequential replay."""
    rng = np.random.default_rng(1)
    losses = rng.exponential(size=(8, 50, K))
    stores = [_open(users_url) for _ in range(8)]
    try:
        def client(c):
            for row in losses[c]:
                stores[c].add_pairs("shared", row[None])

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        state = stores[0].get("shared")
        assert state.pairs == 400
        np.testing.assert_allclose(state.losses, losses.reshape(-1, K).sum(0), rtol=1e-12)
    finally:
        for s in stores:
            s.close()


def test_stores_opened_at_once_on_a_fresh_database_all_open(users_url):
    """Servers started together create the schema at once: every one of them opens (none dies on the race)."""
    errors, stores = [], []
    barrier = threading.Barrier(8)

    def opener():
        barrier.wait()
        try:
            stores.append(_open(users_url))
        except Exception as exc:  # noqa: BLE001 (collected and shown by the assertion)
            errors.append(repr(exc))

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    assert not errors and len(stores) == 8, errors


WRITER = """
import sys, numpy as np
from micro.reward.users import UserStore
store = UserStore.open(sys.argv[1], run="run-a", heads=3, keep_text=True)
step = np.array([[1.0, 2.0, 3.0]])
print("ready", flush=True)
while True:
    n = int(np.random.randint(1, 6))
    store.add_pairs("w", np.repeat(step, n, 0), context="c", texts=[("p", "chosen", "rejected", None)] * n)
"""


def test_a_writer_killed_mid_write_leaves_old_or_new_state(users_url):
    """SIGKILL a process that writes multi-statement transactions in a loop, three times: every time, the
    sums are exactly pairs * (1, 2, 3) and the kept texts number `pairs`: a whole update or none of it."""
    _open(users_url).close()
    last = 0
    for kill_after in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, users_url], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = _open(users_url, keep_text=True)
        try:
            state = store.get("w")
            assert state.pairs > last  # it did write, and every committed write is still there
            np.testing.assert_array_equal(state.losses, state.pairs * np.array([1.0, 2.0, 3.0]))
            assert len(store.pairs_of("w")) == state.pairs
            last = state.pairs
        finally:
            store.close()


INJECTIONS = ["'; DROP TABLE micro_users; --", "x' OR '1'='1", 'a"b', "%s", "?", "%(user)s", "Robert'); DELETE FROM micro_meta;--",
              "ünïcødé ✓", "a" * MAX_USER_ID, "/users/../etc"]


def test_injection_shaped_ids_are_plain_data(users_url):
    store = _open(users_url)
    try:
        store.add_pairs("bystander", np.ones((1, K)))
        for i, user in enumerate(INJECTIONS):
            store.add_pairs(user, np.full((i + 1, K), 0.5))
        for i, user in enumerate(INJECTIONS):
            assert store.get(user).pairs == i + 1 and store.get(user).user == user
        assert store.get("' OR 1=1 --") is None and store.count() == len(INJECTIONS) + 1
        assert store.delete("' OR '1'='1") is False and store.get("bystander").pairs == 1
        _open(users_url).close()  # micro_meta intact: the run check still passes
    finally:
        store.close()


@pytest.mark.parametrize("user", ["", "a" * (MAX_USER_ID + 1), "tab\there", 5, None])
def test_bad_user_ids_are_refused(user):
    with pytest.raises(ValueError):
        check_user_id(user)


def test_a_forgotten_user_leaves_nothing(users_url):
    store = _open(users_url, keep_text=True)
    secret = "zebra-secret-7"
    try:
        store.add_pairs("keeper", np.ones((1, K)), texts=[("keep me", "a", "b", None)])
        for _ in range(3):
            store.add_pairs(f"user-{secret}", np.ones((2, K)), context=f"context {secret}",
                            texts=[(f"prompt {secret}", f"chosen {secret}", "r", None)] * 2)
        assert store.delete(f"user-{secret}") and store.get(f"user-{secret}") is None
        assert store.get("keeper").pairs == 1 and len(store.pairs_of("keeper")) == 1
        if store.dialect.name == "sqlite":  # the bytes of the file and its WAL: not a trace
            for path in (users_url, users_url + "-wal"):
                if os.path.exists(path):
                    assert secret.encode() not in open(path, "rb").read(), path
        else:
            with store._conn() as conn:
                for table in ("micro_users", "micro_pairs", "micro_meta"):
                    rows = conn.execute(f"SELECT * FROM {table}").fetchall()
                    assert secret not in repr(rows), table
    finally:
        store.close()


def test_a_database_of_another_run_is_refused(users_url):
    _open(users_url).close()
    with pytest.raises(StoreError, match="holds the users of another run") as info:
        UserStore.open(users_url, run="run-b", heads=K)
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="another run"):
        UserStore.open(users_url, run="run-a", heads=K + 1)
