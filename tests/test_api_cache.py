"""RedisUserCache against a real Redis and the demo database.

Claims: a cold or flushed cache is rebuilt from Postgres and gives the same
answers; "not in the set" is never confused with "not loaded" (a user with no
upvotes is a complete, empty set); a rebuild never erases a change applied
after its snapshot; late, out-of-order updates never win over newer ones;
with Redis unreachable or paused, answers come from Postgres and a set that
missed a change is invalidated once Redis is back.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa
from api_helpers import wait_for

from api import metrics
from api.cache import BREAKER_SECONDS, RedisUserCache, make_redis_client, user_keys
from deploy.embedded import EmbeddedRedis, free_port
from schema.db import make_engine


@pytest.fixture(scope="module")
def engine(demo_database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(demo_database_url, pool_size=8)
    yield eng
    eng.dispose()


@pytest.fixture()
def cache(redis_url: str, redis_client, engine) -> Iterator[RedisUserCache]:
    client = make_redis_client(redis_url)
    yield RedisUserCache(client, engine)
    client.close()


def uid_of(engine: sa.Engine, username: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM users WHERE username = :u"), {"u": username}).scalar())


def pg_upvotes(engine: sa.Engine, user_id: str) -> set[str]:
    with engine.connect() as conn:
        return {str(x) for x in conn.execute(sa.text(
            "SELECT project_id FROM project_upvotes WHERE user_id = :u"), {"u": user_id}).scalars()}


def some_projects(engine: sa.Engine, n: int = 40) -> list[str]:
    with engine.connect() as conn:
        return [str(x) for x in conn.execute(sa.text(
            "SELECT id FROM projects WHERE NOT is_deleted ORDER BY id LIMIT :n"), {"n": n}).scalars()]


def toggle(engine: sa.Engine, user_id: str, project_id: str) -> tuple[bool, int]:
    """The API's toggle statements, straight to Postgres: (now upvoted?, change time us)."""
    params = {"u": user_id, "p": project_id}
    ts = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
    with engine.begin() as conn:
        while True:
            got = conn.execute(sa.text(
                f"INSERT INTO project_upvotes (user_id, project_id) VALUES (:u, :p) "
                f"ON CONFLICT DO NOTHING RETURNING {ts}"), params).scalar()
            if got is not None:
                return True, int(got)
            got = conn.execute(sa.text(
                f"DELETE FROM project_upvotes WHERE user_id = :u AND project_id = :p RETURNING {ts}"), params).scalar()
            if got is not None:
                return False, int(got)


def test_cold_cache_rebuilds_from_postgres_then_hits(cache, engine, redis_client):
    uid = uid_of(engine, "alice")
    truth = pg_upvotes(engine, uid)
    ids = some_projects(engine, 60) + sorted(truth)[:20]
    first = cache.overlay(uid, ids)
    assert first.source == "rebuilt"
    assert first.upvoted == truth & set(ids)
    assert redis_client.exists(f"user:upvotes:{uid}:complete") == 1
    assert redis_client.smembers(f"user:upvotes:{uid}") == truth
    hits = metrics.USER_CACHE_HITS._value.get()
    second = cache.overlay(uid, ids)
    assert second.source == "redis" and second.upvoted == first.upvoted
    assert metrics.USER_CACHE_HITS._value.get() == hits + 1
    assert cache.get_user_upvotes(uid, ids) == truth & set(ids)


def test_user_without_upvotes_is_a_complete_empty_set(cache, engine, redis_client):
    with engine.begin() as conn:
        uid = str(conn.execute(sa.text(
            "INSERT INTO users (username, name) VALUES (:n, 'No Votes') RETURNING id"),
            {"n": f"novotes_{uuid.uuid4().hex[:8]}"}).scalar())
    ids = some_projects(engine, 5)
    assert cache.overlay(uid, ids).source == "rebuilt"
    assert redis_client.exists(f"user:upvotes:{uid}") == 0  # an empty set is no key...
    again = cache.overlay(uid, ids)
    assert again.source == "redis" and again.upvoted == set()  # ...but the marker says "loaded"


def test_flush_mid_use_changes_no_answer(cache, engine, redis_client):
    users = [uid_of(engine, n) for n in ("alice", "bob", "carol", "admin")]
    ids = some_projects(engine, 100)
    before = {u: cache.get_user_upvotes(u, ids) for u in users}
    redis_client.flushdb()
    after = {u: cache.get_user_upvotes(u, ids) for u in users}
    assert after == before
    assert after == {u: pg_upvotes(engine, u) & set(ids) for u in users}


def test_applied_change_updates_a_complete_set(cache, engine, redis_client):
    uid = uid_of(engine, "carol")
    pid = some_projects(engine, 1)[0]
    cache.overlay(uid, [pid])  # load
    upvoted, ts = toggle(engine, uid, pid)
    (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts)
    assert bool(redis_client.sismember(f"user:upvotes:{uid}", pid)) == upvoted
    assert cache.overlay(uid, [pid]).source == "redis"
    assert (pid in cache.get_user_upvotes(uid, [pid])) == upvoted
    upvoted2, ts2 = toggle(engine, uid, pid)
    (cache.add_upvote if upvoted2 else cache.remove_upvote)(uid, pid, ts2)
    assert upvoted2 is not upvoted
    assert (pid in cache.get_user_upvotes(uid, [pid])) == upvoted2


def test_late_older_update_never_overrides_a_newer_one(cache, engine, redis_client):
    uid = uid_of(engine, "bob")
    pid = str(uuid.uuid4())  # membership logic only; no Postgres row needed
    cache.overlay(uid, [pid])
    now = int(time.time() * 1e6)
    cache.remove_upvote(uid, pid, now + 20)   # the newer change arrives first
    cache.add_upvote(uid, pid, now + 10)      # the older one arrives late
    assert bool(redis_client.sismember(f"user:upvotes:{uid}", pid)) is False
    cache.add_upvote(uid, pid, now + 30)
    assert bool(redis_client.sismember(f"user:upvotes:{uid}", pid)) is True
    toggles = cache.overlay(uid, [pid]).toggles[pid]
    assert (toggles.prev_us, toggles.last_us, toggles.upvoted) == (now + 20, now + 30, True)


def test_rebuild_never_erases_a_change_applied_after_its_snapshot(cache, engine, redis_client):
    """The race: snapshot read from Postgres, a write commits and reaches Redis,
    then the rebuild installs its (older) snapshot. The install must be refused."""
    uid = uid_of(engine, "alice")
    pid = some_projects(engine, 200)[-1]
    redis_client.delete(*user_keys(uid))
    s_key, c_key, _t, e_key = user_keys(uid)
    epoch_before = redis_client.get(e_key) or "0"
    snapshot = pg_upvotes(engine, uid)                     # 1. the rebuild's snapshot
    upvoted, ts = toggle(engine, uid, pid)                 # 2. a write commits...
    (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts)  # ...and reaches Redis
    installed = cache._install(keys=[s_key, c_key, e_key],  # 3. the stale install
                               args=[epoch_before, 3600, *snapshot])
    assert installed == 0
    assert redis_client.exists(c_key) == 0                 # not marked complete with stale data
    got = cache.overlay(uid, [pid])                        # the next read rebuilds correctly
    assert (pid in got.upvoted) == upvoted == (pid in pg_upvotes(engine, uid))


def test_concurrent_toggles_flushes_and_reads_converge(cache, engine, redis_client, redis_url):
    """Threads toggle, read (rebuilding) and flush at once; afterwards Redis equals Postgres."""
    users = [uid_of(engine, n) for n in ("alice", "bob", "carol")]
    projects = some_projects(engine, 8)
    stop = time.monotonic() + 3.0
    errors: list[BaseException] = []

    def writer(uid: str) -> None:
        rng = random.Random(uid)
        try:
            while time.monotonic() < stop:
                pid = rng.choice(projects)
                upvoted, ts = toggle(engine, uid, pid)
                (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def reader() -> None:
        try:
            while time.monotonic() < stop:
                for uid in users:
                    cache.overlay(uid, projects)
        except BaseException as exc:
            errors.append(exc)

    def flusher() -> None:
        other = redis_lib.Redis.from_url(redis_url)
        while time.monotonic() < stop:
            time.sleep(0.2)
            for uid in users:
                other.delete(*user_keys(uid)[:2])
        other.close()

    threads = [threading.Thread(target=writer, args=(u,)) for u in users for _ in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)] + [threading.Thread(target=flusher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for uid in users:
        truth = pg_upvotes(engine, uid)
        assert cache.get_user_upvotes(uid, projects) == truth & set(projects)
        if redis_client.exists(f"user:upvotes:{uid}:complete"):
            assert redis_client.smembers(f"user:upvotes:{uid}") == truth


def test_redis_down_answers_from_postgres(engine, work_dir):
    server = EmbeddedRedis(work_dir / f"redis-down-{uuid.uuid4().hex[:6]}", free_port())
    server.start()
    client = make_redis_client(server.url(0))
    cache = RedisUserCache(client, engine)
    try:
        uid = uid_of(engine, "alice")
        ids = some_projects(engine, 50) + sorted(pg_upvotes(engine, uid))[:10]
        warm = cache.overlay(uid, ids)
        assert warm.source == "rebuilt"
        server.stop()
        started = time.monotonic()
        down = cache.overlay(uid, ids)
        assert down.source == "postgres"
        assert down.upvoted == warm.upvoted == pg_upvotes(engine, uid) & set(ids)
        assert time.monotonic() - started < 2.0
        # While the breaker is open, no Redis attempt at all.
        assert cache.overlay(uid, ids).source == "postgres"
        assert cache.health_check()["status"] == "unhealthy"
        # A change committed while Redis is down still succeeds in Postgres.
        pid = ids[0]
        upvoted, ts = toggle(engine, uid, pid)
        assert (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts) is False
        assert (pid in cache.get_user_upvotes(uid, [pid])) == upvoted
        server.start()
        time.sleep(BREAKER_SECONDS)
        back = wait_for(lambda: (o := cache.overlay(uid, ids)).source != "postgres" and o, timeout=5,
                        what="Redis to be used again")
        assert back.upvoted == pg_upvotes(engine, uid) & set(ids)
        assert cache.health_check()["status"] == "healthy"
    finally:
        client.close()
        server.stop()


def test_set_that_missed_a_change_is_invalidated_when_redis_is_back(cache, engine, redis_client):
    """Redis paused (not restarted: its data survives) while a change commits: the
    stale set must not be served once Redis answers again."""
    uid = uid_of(engine, "bob")
    pid = some_projects(engine, 30)[7]
    cache.overlay(uid, [pid])  # warm and complete
    redis_client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    upvoted, ts = toggle(engine, uid, pid)
    assert (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts) is False
    during = cache.overlay(uid, [pid])
    assert during.source == "postgres" and (pid in during.upvoted) == upvoted
    wait_for(lambda: redis_client.ping(), timeout=5, what="the pause to end")
    time.sleep(BREAKER_SECONDS)
    after = wait_for(lambda: (o := cache.overlay(uid, [pid])).source != "postgres" and o, timeout=5,
                     what="Redis to be used again")
    assert (pid in after.upvoted) == upvoted == (pid in pg_upvotes(engine, uid))
    assert bool(redis_client.sismember(f"user:upvotes:{uid}", pid)) == upvoted


def test_rebuild_begun_before_a_missed_change_cannot_install_after_recovery(cache, engine, redis_client):
    """A rebuild read the epoch and its snapshot; then a change committed while Redis
    was paused (its update lost); Redis came back and another read rebuilt correctly.
    The first rebuild's late install must be refused, or it would undo the change."""
    uid = uid_of(engine, "carol")
    pid = some_projects(engine, 40)[13]
    s_key, c_key, _t, e_key = user_keys(uid)
    redis_client.delete(s_key, c_key)
    epoch_before = redis_client.get(e_key) or "0"
    stale_snapshot = pg_upvotes(engine, uid)                  # rebuild #1: epoch + snapshot
    redis_client.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    upvoted, ts = toggle(engine, uid, pid)                    # the change commits...
    assert (cache.add_upvote if upvoted else cache.remove_upvote)(uid, pid, ts) is False  # ...Redis misses it
    wait_for(lambda: redis_client.ping(), timeout=5, what="the pause to end")
    time.sleep(BREAKER_SECONDS)
    fresh = wait_for(lambda: (o := cache.overlay(uid, [pid])).source != "postgres" and o, timeout=5,
                     what="Redis to be used again")            # rebuild #2, correct
    assert (pid in fresh.upvoted) == upvoted
    assert cache._install(keys=[s_key, c_key, e_key], args=[epoch_before, 3600, *stale_snapshot]) == 0
    assert bool(redis_client.sismember(s_key, pid)) == upvoted == (pid in pg_upvotes(engine, uid))
