"""The data generator: deterministic, complete, consistent, and careful with what it refuses.

Every claim runs the real ``seed()`` against a real Postgres (the session's private cluster).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from schema import seed as seed_module
from schema.db import load_queries, raw_connection
from schema.migrate import MIGRATIONS_DIR
from schema.seed import BASE_TABLES, SCALES, SeedError, seed

ROOT = Path(__file__).resolve().parent.parent
DEMO = SCALES["demo"]
TRUTH_FILE = ROOT / "schema" / "queries" / "phase1_truth.sql"


def quiet(line: str) -> None:
    pass


def digests(url: str) -> dict[str, str]:
    """md5 of every base table's rows (all columns, ids included), in a fixed order."""
    out = {}
    with raw_connection(url) as conn, conn.cursor() as cur:
        for table in BASE_TABLES:
            # Table names come from the BASE_TABLES constant.
            cur.execute(f"SELECT md5(string_agg(t::text, E'\\n' ORDER BY t::text)) FROM {table} t")
            out[table] = cur.fetchone()[0]
    return out


def scalar(url: str, query: str, params: tuple = ()) -> object:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with raw_connection(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def db_name(url: str) -> str:
    return sa.engine.make_url(url).database


@pytest.fixture(scope="module")
def demo_digests(demo_database_url: str) -> dict[str, str]:
    return digests(demo_database_url)


@pytest.fixture(scope="module")
def demo_output(create_database: Callable[..., str], migrated_template: str) -> tuple[str, list[str]]:
    """A demo seed (seed 42) of our own, with every line it printed."""
    url = create_database(template=migrated_template, prefix="seedout")
    lines: list[str] = []
    seed(url, "demo", seed=42, out=lines.append)
    return url, lines


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_gives_identical_rows_and_ids(demo_output: tuple[str, list[str]],
                                               demo_digests: dict[str, str]) -> None:
    url, _ = demo_output
    assert digests(url) == demo_digests
    assert all(demo_digests.values()), "every base table has rows"


def test_loading_in_chunks_gives_the_same_rows(create_database: Callable[..., str], migrated_template: str,
                                               demo_digests: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bench-size tables load in chunks; the chunk size must not change the data."""
    monkeypatch.setattr(seed_module, "CHUNK_ROWS", 700)
    url = create_database(template=migrated_template, prefix="seedchunk")
    lines: list[str] = []
    seed(url, "demo", seed=42, out=lines.append)
    assert digests(url) == demo_digests
    assert any("project_upvotes: " in line and " / 6,000 rows (" in line for line in lines), lines


def test_a_different_seed_gives_different_rows(create_database: Callable[..., str], migrated_template: str,
                                               demo_digests: dict[str, str]) -> None:
    url = create_database(template=migrated_template, prefix="seed7")
    seed(url, "demo", seed=7, out=quiet)
    other = digests(url)
    assert all(other[t] != demo_digests[t] for t in BASE_TABLES)
    # Same shape, other content.
    assert scalar(url, "SELECT count(*) FROM project_upvotes") == DEMO.project_upvotes
    assert scalar(url, "SELECT count(*) FROM users WHERE username IN ('alice', 'bob', 'carol', 'admin')") == 4


# --- content ---------------------------------------------------------------------------------


def test_counts_match_the_scale(demo_database_url: str) -> None:
    for table in BASE_TABLES:
        assert scalar(demo_database_url, f"SELECT count(*) FROM {table}") == getattr(DEMO, table), table


def test_guide_numbers_for_demo() -> None:
    assert DEMO.users == 1523 and DEMO.conversations == 487


def test_every_foreign_key_and_unique_constraint_holds(demo_database_url: str, migrated_template: str,
                                                       create_database: Callable[..., str]) -> None:
    """Re-adding each foreign key makes Postgres check every row; the schema is exactly as migrated."""
    with raw_connection(demo_database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid WHERE c.contype = 'f' AND t.relname = ANY(%s)",
            (list(BASE_TABLES),),
        )
        foreign_keys = cur.fetchall()
        assert len(foreign_keys) >= 20
        for table, name, definition in foreign_keys:
            cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')  # validates all rows
        conn.rollback()

    def schema_of(url: str) -> set[tuple]:
        constraints = rows(url, "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated "
                                "FROM pg_constraint WHERE connamespace = 'public'::regnamespace")
        indexes = rows(url, "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisvalid "
                            "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'")
        return set(constraints) | set(indexes)

    fresh = create_database(template=migrated_template, prefix="seedschema")
    assert schema_of(demo_database_url) == schema_of(fresh)

    pairs = {
        "project_upvotes": "user_id, project_id",
        "post_upvotes": "user_id, post_id",
        "chain_members": "chain_id, user_id",
        "conversations": "user1_id, user2_id",
    }
    for table, cols in pairs.items():
        assert scalar(demo_database_url, f"SELECT count(DISTINCT ({cols})) FROM {table}") == getattr(DEMO, table)
    assert scalar(demo_database_url, "SELECT count(*) FROM conversations WHERE user1_id >= user2_id") == 0


def test_named_users_exist(demo_database_url: str) -> None:
    users = {r[0]: r[1:] for r in rows(demo_database_url, "SELECT username, role, is_admin, id FROM users "
                                                          "WHERE username IN ('alice', 'bob', 'carol', 'admin')")}
    assert set(users) == {"alice", "bob", "carol", "admin"}
    assert users["alice"][0] == "builder"
    assert scalar(demo_database_url, "SELECT count(*) FROM projects WHERE user_id = %s AND NOT is_deleted",
                  (users["alice"][2],)) >= 3
    assert users["bob"][0] == "investor"
    assert scalar(demo_database_url, "SELECT count(*) FROM investors WHERE user_id = %s AND NOT is_deleted",
                  (users["bob"][2],)) == 1
    assert users["carol"][0] == "member" and not users["carol"][1]
    assert users["admin"][1] is True
    assert scalar(demo_database_url, "SELECT count(*) FROM users WHERE is_admin") == 1


def test_titles_carry_the_words_the_guide_searches_for(demo_database_url: str) -> None:
    titles = scalar(demo_database_url,
                    "SELECT count(*) FILTER (WHERE title ILIKE '%%blockchain%%') || ',' || "
                    "count(*) FILTER (WHERE title ILIKE '%%web3%%') FROM projects WHERE NOT is_deleted")
    blockchain, web3 = map(int, titles.split(","))
    assert blockchain >= 5 and web3 >= 5
    assert scalar(demo_database_url, "SELECT count(*) FROM projects WHERE description ~* '\\mproject\\M'") >= 50
    # Varied vocabulary: many distinct titles and words.
    assert scalar(demo_database_url, "SELECT count(DISTINCT title) FROM projects") >= 500
    assert scalar(demo_database_url, "SELECT count(DISTINCT w) FROM projects, "
                                     "regexp_split_to_table(lower(description), '[^a-z0-9]+') w") >= 150


def test_children_are_never_older_than_their_parents(demo_database_url: str) -> None:
    checks = {
        "project older than its owner": "SELECT count(*) FROM projects p JOIN users u ON u.id = p.user_id "
                                        "WHERE p.created_at < u.created_at",
        "upvote older than project or voter": "SELECT count(*) FROM project_upvotes v "
                                              "JOIN projects p ON p.id = v.project_id JOIN users u ON u.id = v.user_id "
                                              "WHERE v.created_at < p.created_at OR v.created_at < u.created_at",
        "comment older than project": "SELECT count(*) FROM project_comments c JOIN projects p ON p.id = c.project_id "
                                      "WHERE c.created_at < p.created_at",
        "post vote older than post": "SELECT count(*) FROM post_upvotes v JOIN chain_posts p ON p.id = v.post_id "
                                     "WHERE v.created_at < p.created_at",
        "message older than conversation": "SELECT count(*) FROM messages m "
                                           "JOIN conversations c ON c.id = m.conversation_id "
                                           "WHERE m.created_at < c.created_at "
                                           "OR m.sender_id NOT IN (c.user1_id, c.user2_id)",
        "member older than chain": "SELECT count(*) FROM chain_members m JOIN chains c ON c.id = m.chain_id "
                                   "WHERE m.created_at < c.created_at",
        "intro not about the requester's project": "SELECT count(*) FROM intro_requests i "
                                                   "JOIN projects p ON p.id = i.project_id "
                                                   "WHERE p.user_id <> i.requester_id OR i.created_at < p.created_at",
        "future rows": "SELECT (SELECT count(*) FROM projects WHERE created_at > '2026-11-01') "
                       "+ (SELECT count(*) FROM messages WHERE created_at > '2026-11-01')",
    }
    for claim, query in checks.items():
        assert scalar(demo_database_url, query) == 0, claim


def test_every_chain_has_its_owner_as_member_and_some_pinned_posts(demo_database_url: str) -> None:
    assert scalar(demo_database_url, "SELECT count(*) FROM chains c WHERE NOT EXISTS (SELECT 1 FROM chain_members m "
                                     "WHERE m.chain_id = c.id AND m.user_id = c.owner_id AND m.role = 'owner')") == 0
    assert scalar(demo_database_url, "SELECT count(DISTINCT chain_id) FROM chain_posts WHERE is_pinned") >= 5


def test_popularity_is_skewed_and_recent_activity_is_denser(demo_database_url: str) -> None:
    top, median = rows(demo_database_url, "SELECT max(n), percentile_disc(0.5) WITHIN GROUP (ORDER BY n) FROM "
                                          "(SELECT count(*) n FROM project_upvotes GROUP BY project_id) s")[0]
    assert top >= 10 * median
    older, newer = rows(demo_database_url,
                        "SELECT count(*) FILTER (WHERE created_at < '2026-05-01'), "
                        "count(*) FILTER (WHERE created_at >= '2026-05-01') FROM project_upvotes")[0]
    assert newer > 1.5 * older


# --- derived state after seed ----------------------------------------------------------------


def test_materialized_views_equal_a_fresh_computation(demo_database_url: str) -> None:
    views = [r[0] for r in rows(demo_database_url, "SELECT matviewname FROM pg_matviews WHERE schemaname = 'public'")]
    assert len(views) == 8, views
    with raw_connection(demo_database_url) as conn, conn.cursor() as cur:
        for view in views:
            cur.execute("SELECT pg_get_viewdef(%s::regclass)", (view,))
            definition = cur.fetchone()[0].rstrip().rstrip(";")
            # View names and definitions come from the catalog.
            cur.execute(f"SELECT count(*) FROM ((TABLE {view} EXCEPT ALL ({definition})) "
                        f"UNION ALL (({definition}) EXCEPT ALL TABLE {view})) d")
            assert cur.fetchone()[0] == 0, view
            cur.execute(f"SELECT count(*) FROM {view}")
            assert cur.fetchone()[0] > 0, f"{view} is empty after seed"


def test_nothing_is_pending_after_seed(demo_database_url: str) -> None:
    assert scalar(demo_database_url, "SELECT count(*) FROM mv_refresh_requests") == 0
    assert scalar(demo_database_url, "SELECT count(*) FROM mv_refresh_queue WHERE status = 'pending'") == 0


def test_seed_refreshes_are_logged_so_caches_see_new_contents(demo_database_url: str) -> None:
    """The API keys its response cache on the last completed mv_refresh_log row of a view."""
    logged = dict(rows(demo_database_url, "SELECT view_name, rows_in_view FROM mv_refresh_log "
                                          "WHERE status = 'completed' AND worker = 'seed'"))
    views = {r[0] for r in rows(demo_database_url, "SELECT matviewname FROM pg_matviews WHERE schemaname = 'public'")}
    assert set(logged) == views
    for view, count in logged.items():
        assert scalar(demo_database_url, f"SELECT count(*) FROM {view}") == count, view


def test_denormalized_tables_equal_the_truth(demo_database_url: str) -> None:
    """Phase 1's own truth queries (schema/queries/phase1_truth.sql) against what is stored, in one snapshot."""
    assert scalar(demo_database_url, "SELECT count(*) FROM user_dashboard_stats") == DEMO.users
    assert scalar(demo_database_url, "SELECT count(*) FROM message_conversations_denorm") == DEMO.conversations
    assert scalar(demo_database_url, "SELECT count(*) FROM intro_request_stats") == DEMO.users
    for deltas in ("user_dashboard_stats_deltas", "message_conversations_denorm_deltas", "intro_request_stats_deltas"):
        assert scalar(demo_database_url, f"SELECT count(*) FROM {deltas}") == 0, deltas
    # Comment lines go: a comment that follows a query in the file becomes part of its text, and a ":name"
    # inside it would read as a bind parameter.
    queries = {name: sa.text("\n".join(line for line in q.text.splitlines() if not line.lstrip().startswith("--")))
               for name, q in load_queries(TRUTH_FILE).items()}
    engine = sa.create_engine(demo_database_url.replace("postgresql://", "postgresql+psycopg2://", 1),
                              isolation_level="REPEATABLE READ")
    try:
        with engine.connect() as conn:
            user_ids = [str(r[0]) for r in conn.execute(sa.text("SELECT id FROM users"))]
            conversation_ids = [str(r[0]) for r in conn.execute(sa.text("SELECT id FROM conversations"))]
            for table, ids in (("user_dashboard_stats", user_ids), ("message_conversations_denorm", conversation_ids),
                               ("intro_request_stats", user_ids)):
                truth = conn.execute(queries[f"{table}_truth"], {"ids": ids}).all()
                stored = conn.execute(queries[f"{table}_stored"], {"ids": ids}).all()
                assert len(truth) == len(ids), table
                assert stored == truth, table
                # Not all zeros: the demo data gives every page something to show.
                nonzero = sum(1 for row in truth if any(isinstance(v, int) and v > 0 for v in row))
                assert nonzero >= min(len(ids) // 4, 100), table
    finally:
        engine.dispose()


def test_backfill_notices_are_forwarded(demo_output: tuple[str, list[str]]) -> None:
    _, lines = demo_output
    text = "\n".join(lines)
    assert "Backfilled 1523 rows in user_dashboard_stats" in text
    assert "Backfilled 487 rows in message_conversations_denorm" in text


def test_progress_and_summary_lines(demo_output: tuple[str, list[str]]) -> None:
    _, lines = demo_output
    assert "users: 1,523 rows in " in "\n".join(lines)
    assert any(line.startswith("project_upvotes: 6,000 rows in ") for line in lines)
    assert any(line.startswith("database size: ") for line in lines)
    assert any(line.startswith("total ") for line in lines)


# --- refusals --------------------------------------------------------------------------------


def test_unmigrated_database_is_refused_and_left_untouched(create_database: Callable[..., str]) -> None:
    url = create_database(prefix="seedbare")
    with pytest.raises(SeedError, match="python -m schema migrate"):
        seed(url, "demo", out=quiet)
    assert scalar(url, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace") == 0


def test_partially_migrated_database_is_refused(create_database: Callable[..., str], tmp_path: Path) -> None:
    """Base tables alone (e.g. a failed migrate) are not enough: derived state would be missing."""
    url = create_database(prefix="seedpart")
    from schema.migrate import migrate

    first = sorted(MIGRATIONS_DIR.glob("*.sql"))[0]
    (tmp_path / first.name).write_text(first.read_text())
    migrate(url, directory=tmp_path, out=quiet)
    with pytest.raises(SeedError, match="pending migration.*python -m schema migrate"):
        seed(url, "demo", out=quiet)
    assert scalar(url, "SELECT count(*) FROM users") == 0


def test_populated_database_is_refused_without_force(demo_database_url: str,
                                                     demo_digests: dict[str, str]) -> None:
    with pytest.raises(SeedError, match="already has 1,523 users.*--force"):
        seed(demo_database_url, "demo", seed=9, out=quiet)
    assert digests(demo_database_url) == demo_digests


def test_force_truncates_and_reseeds_clearing_pending_requests(create_database: Callable[..., str],
                                                               demo_template: str,
                                                               demo_digests: dict[str, str]) -> None:
    url = create_database(template=demo_template, prefix="seedforce")
    with raw_connection(url) as conn, conn.cursor() as cur:
        # An ordinary write: triggers fire, derived tables change, refresh requests appear.
        cur.execute("INSERT INTO projects (user_id, title) SELECT id, 'Extra Project' FROM users "
                    "WHERE username = 'carol'")
        conn.commit()
    seed(url, "demo", seed=42, force=True, out=quiet)
    assert digests(url) == demo_digests
    assert scalar(url, "SELECT count(*) FROM mv_refresh_requests") == 0
    # Triggers are back on: a write after the seed is seen by them.
    assert scalar(url, "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                       "WHERE NOT t.tgisinternal AND t.tgenabled <> 'O' AND c.relname = ANY(%s)",
                  (list(BASE_TABLES),)) == 0


def test_unknown_scale_is_refused(empty_database_url: str) -> None:
    with pytest.raises(SeedError, match="unknown scale 'huge'.*demo, bench, quick"):
        seed(empty_database_url, "huge", out=quiet)
    assert scalar(empty_database_url, "SELECT count(*) FROM users") == 0


def test_cli_unknown_scale_prints_one_line_and_exits_non_zero(empty_database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    proc = subprocess.run([sys.executable, "-m", "schema", "seed", "--scale", "huge"], cwd=ROOT,
                          env={**env, "DATABASE_URL": empty_database_url}, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "huge" in lines[0] and all(name in lines[0] for name in SCALES)


# --- without superuser -----------------------------------------------------------------------


def test_seed_without_superuser_disables_triggers_per_table(admin_url: str, create_database: Callable[..., str],
                                                            demo_digests: dict[str, str]) -> None:
    """A non-superuser owner cannot set session_replication_role; the fallback gives the same data."""
    role = "seed_owner_role"
    with raw_connection(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {role}")
        cur.execute(f"CREATE ROLE {role} LOGIN")
    url = create_database(prefix="seednosu")
    with raw_connection(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{db_name(url)}" OWNER TO {role}')
        cur.execute(f"ALTER SCHEMA public OWNER TO {role}")
    role_url = sa.engine.make_url(url).set(username=role, password=None).render_as_string(hide_password=False)
    from schema.migrate import MigrationError, migrate

    try:
        result = migrate(role_url, out=quiet)
    except MigrationError as exc:
        pytest.skip(f"migrations failed as a non-superuser: {exc}")
    if not result.ok:
        pytest.skip(f"migrations need a superuser: {result.failed_statements[:1]}")
    lines: list[str] = []
    try:
        seed(role_url, "demo", seed=42, out=lines.append)
    except psycopg2.Error as exc:  # pragma: no cover - reported with the reason
        pytest.fail(f"seed as a non-superuser failed: {exc}")
    assert any("DISABLE TRIGGER USER" in line for line in lines)
    assert digests(role_url) == demo_digests
    assert scalar(role_url, "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                            "WHERE NOT t.tgisinternal AND t.tgenabled <> 'O'") == 0
