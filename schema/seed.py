"""The data generator: ``python -m schema seed --scale demo|bench|quick [--seed N]``.

Fills the base tables with deterministic, realistic-looking data, then makes
everything derived consistent with it: the Phase 1 backfill and
``backfill_project_stats()``, a plain refresh of
every materialized view, no pending refresh requests, ``VACUUM ANALYZE``.

How it stays fast and reproducible:

* Every value comes from SQL (``INSERT ... SELECT FROM generate_series``) and
  every "random" choice is ``hashint8extended(n, seed-and-purpose)`` of the
  row's index: no row crosses the wire, and the same seed gives the same rows
  (ids included) on any day. ``hashint8extended`` is the hash Postgres uses for
  hash partitioning, so it is stable across platforms and versions.
* Ids are UUIDs made of a per-table, per-seed prefix and the row index in the
  last 12 hex digits, so ids sort in index order and the primary keys that
  foreign keys need (kept during the load) are filled in key order.
* The whole load is one transaction: user triggers and foreign-key checks are
  off for the session (``session_replication_role = replica``), indexes and
  constraints that no foreign key depends on are dropped and rebuilt after the
  load (a sort-built index is much cheaper than millions of random inserts),
  and a failure anywhere leaves the database as it was.
* Times are measured in days before a fixed anchor (default
  ``DEFAULT_ANCHOR``), with more activity in recent months. Children are never
  older than their parents.

Popularity is power-law: the share of a table's rows that go to the top x of
its parents is ``x ** beta`` (a few projects get thousands of upvotes, the
median a handful), and the most active users are the oldest ones.

Operational notes:

* The load transaction holds ACCESS EXCLUSIVE locks on the base tables (their
  indexes are dropped and rebuilt), so readers of those tables wait until it
  commits: seed before starting the API, or accept a pause.
* "Same seed, same rows" holds on one platform. Row counts per parent use
  float ``power()``/``sqrt()``; a different libm could round a boundary the
  other way.
* The Redis per-user cache is not touched: after ``--force`` flush it (or its
  ``user:upvotes:*`` keys), since the cached sets describe the old rows.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from graphlib import TopologicalSorter

import psycopg2
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from schema.db import raw_connection
from schema.migrate import MIGRATIONS_DIR, Migration, MigrationError, discover, transaction_body

# The data "ends" here. Fixed, so the same seed gives the same data on any day;
# recent enough that the demo feed looks current. Pass anchor= to move it.
DEFAULT_ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)

# Base tables in load order (parents before children).
BASE_TABLES = (
    "users",
    "chains",
    "chain_members",
    "projects",
    "project_upvotes",
    "project_comments",
    "chain_posts",
    "post_upvotes",
    "post_comments",
    "conversations",
    "messages",
    "investors",
    "intro_requests",
)
# Phase 1's tables (the backfill rewrites them); analyzed after the load when present.
DERIVED_TABLES = ("user_dashboard_stats", "message_conversations_denorm", "intro_request_stats", "project_stats")
CHUNK_ROWS = 500_000
# Multiplier of the rank -> row permutations; prime, so coprime with every table size below it.
PERMUTATION_PRIME = 1_000_003
# Window sizes for collision-free pair generation: a geometric ladder of primes.
LADDER_STEPS = 32
SEED_LOCK_KEY = 7_402_113_002  # one seed at a time per database (migrate uses ...001)


@dataclass(frozen=True)
class Scale:
    """Row counts per base table."""

    users: int
    chains: int
    chain_members: int
    projects: int
    project_upvotes: int
    project_comments: int
    chain_posts: int
    post_upvotes: int
    post_comments: int
    conversations: int
    messages: int
    investors: int
    intro_requests: int


SCALES: dict[str, Scale] = {
    # The guide's numbers (1,523 users, 487 conversations) and enough of the rest for every page to look alive.
    "demo": Scale(
        users=1_523, chains=20, chain_members=1_500, projects=600, project_upvotes=6_000, project_comments=2_000,
        chain_posts=400, post_upvotes=2_000, post_comments=800, conversations=487, messages=4_000, investors=60,
        intro_requests=300,
    ),
    "bench": Scale(
        users=100_000, chains=1_000, chain_members=250_000, projects=500_000, project_upvotes=5_000_000,
        project_comments=2_000_000, chain_posts=200_000, post_upvotes=1_000_000, post_comments=400_000,
        conversations=120_000, messages=1_000_000, investors=5_000, intro_requests=50_000,
    ),
    # ~1/20 of bench: a benchmark that runs in a few minutes.
    "quick": Scale(
        users=5_000, chains=50, chain_members=12_500, projects=25_000, project_upvotes=250_000,
        project_comments=100_000, chain_posts=10_000, post_upvotes=50_000, post_comments=20_000,
        conversations=6_000, messages=50_000, investors=250, intro_requests=2_500,
    ),
}

# Power-law exponents: the top fraction x of parents gets x**beta of the children.
BETA = {
    "project_upvotes": 0.53,  # bench: top project ~4.8k upvotes, median ~7
    "project_comments": 0.55,
    "chain_members": 0.40,
    "chain_posts": 0.40,
    "post_upvotes": 0.50,
    "post_comments": 0.55,
    "conversations": 0.50,
    "messages": 0.60,
    "intro_requests": 0.55,
}

# Named users the README's examples use. Their indexes fit the role arithmetic: builders are
# k = 1 (mod 3), investors k = 2 (mod 3) (bob is investor 1), so admin and carol sit at multiples of 3.
NAMED_USERS = {1: "alice", 2: "bob", 3: "admin", 6: "carol"}

FIRST_NAMES = [
    "Ada", "Ben", "Chloe", "Diego", "Elena", "Farah", "Gabe", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo",
    "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Xavi", "Yara", "Zane",
    "Aiko", "Bruno", "Chen", "Dana", "Emeka", "Freya", "Goran", "Hugo", "Ines", "Jonas", "Kira", "Luca", "Maya",
    "Nikhil", "Olga", "Pablo", "Rhea", "Sven", "Talia", "Uma", "Viktor", "Willa", "Yusuf", "Zoe",
]
LAST_NAMES = [
    "Okafor", "Lindqvist", "Tanaka", "Moreau", "Haddad", "Kowalski", "Nguyen", "Silva", "Patel", "Schmidt",
    "Rossi", "Andersen", "Kim", "Garcia", "Novak", "Mensah", "Ivanova", "Costa", "Dubois", "Yilmaz", "Fischer",
    "Hughes", "Ortiz", "Sato", "Bakker", "Mwangi", "Larsen", "Romero", "Chowdhury", "Weber", "Nakamura",
    "Petrov", "Oliveira", "Murphy", "Kaur", "Lopez", "Berg", "Adeyemi", "Huang", "Conti", "Reyes", "Falk",
    "Abadi", "Varga", "Duarte", "Holm", "Stone", "Arora", "Quispe", "Eze",
]
DOMAINS = [
    "Blockchain", "Web3", "AI", "Machine Learning", "Climate", "Fintech", "Healthtech", "Edtech", "DevTools",
    "Gaming", "Robotics", "Biotech", "Privacy", "Open Source", "Data", "Security", "Payments", "Logistics",
    "Energy", "Agritech", "Music", "Creator", "DeFi", "IoT", "AR", "Quantum", "Mobility", "Legal", "Proptech",
    "Social",
]
ADJECTIVES = [
    "Decentralized", "Open", "Realtime", "Serverless", "Collaborative", "Autonomous", "Private", "Scalable",
    "Lightweight", "Smart", "Verifiable", "Portable", "Composable", "Federated", "Instant", "Secure", "Tiny",
    "Distributed", "Adaptive", "Transparent", "Offline-first", "Peer-to-peer", "Low-code", "Green", "Modular",
    "Community", "Trustless", "Programmable", "Frictionless", "Fast",
]
NOUNS = [
    "Wallet", "Marketplace", "Protocol", "Dashboard", "Toolkit", "Platform", "Engine", "Network", "Oracle",
    "Ledger", "Exchange", "Assistant", "Tracker", "Studio", "Framework", "SDK", "API", "Bridge", "Vault",
    "Index", "Compiler", "Scheduler", "Notebook", "Feed", "Registry", "Sandbox", "Gateway", "Monitor",
    "Planner", "Hub",
]
VERBS = [
    "tracks", "automates", "simplifies", "secures", "verifies", "indexes", "visualizes", "connects", "rewards",
    "audits", "streams", "predicts", "optimizes", "tokenizes", "anonymizes", "schedules", "benchmarks",
    "translates", "compresses", "syncs",
]
OBJECTS = [
    "carbon credits", "payroll", "supply chains", "medical records", "smart contracts", "open source funding",
    "energy usage", "loyalty points", "NFT royalties", "model training runs", "API usage", "learning progress",
    "farm yields", "invoices", "DAO votes", "research data", "community grants", "code reviews", "ticket sales",
    "sensor data",
]
AUDIENCES = [
    "small businesses", "developers", "students", "hospitals", "creators", "DAOs", "farmers", "freelancers",
    "researchers", "gamers", "nonprofits", "startups", "city councils", "musicians", "logistics teams",
    "data scientists", "landlords", "teachers", "remote teams", "investors",
]
# Product names ("Nexflow", "Lumforge"): 31 x 30 of them, so titles are not all alike to trigram search.
BRAND_STARTS = [
    "Lu", "Ze", "Ka", "No", "Vi", "Ara", "Bel", "Cor", "Dra", "Eno", "Fi", "Gal", "Hex", "Io", "Jun", "Kyr",
    "Lum", "Mor", "Nex", "Oro", "Pix", "Qua", "Rho", "Sol", "Tri", "Ul", "Vor", "Wyn", "Xe", "Yo", "Zan",
]
BRAND_ENDS = [
    "ra", "vix", "mo", "lio", "tic", "nova", "bit", "dex", "flow", "grid", "ly", "mint", "nest", "pulse", "quill",
    "rift", "sync", "tide", "verse", "wave", "zen", "kit", "loop", "base", "forge", "hive", "link", "spark",
    "stack", "works",
]
GROUPS = ["Builders", "Guild", "Collective", "Club", "Lab", "Circle", "Hackers", "Founders", "DAO", "Society"]
FIRM_WORDS = ["Ventures", "Capital", "Partners", "Fund", "Labs", "Angels", "Growth", "Seed"]
INVESTOR_TITLES = ["Partner", "Principal", "Associate", "Angel", "Managing Partner", "Scout"]
LOCATIONS = [
    "San Francisco", "New York", "London", "Berlin", "Lagos", "Bangalore", "Singapore", "Toronto", "Paris",
    "Sao Paulo", "Nairobi", "Tel Aviv", "Stockholm", "Austin", "Remote",
]
STAGES = ["pre-seed", "seed", "series-a", "series-b", "growth"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

DESCRIPTION_TEMPLATES = [
    "A {adj} {noun} that {verb} {obj} for {aud}.",
    "This project {verb} {obj} using {dom} and {dom2}.",
    "Built on {dom}, it {verb} {obj} in real time.",
    "We are a {dom} project helping {aud} with {obj}.",
    "Our {noun} {verb} {obj} so {aud} can focus on what matters.",
    "An open source {dom} {noun} with a clean API and good docs.",
    "Looking for contributors who know {dom} and {dom2}.",
    "The first {adj} {noun} for {aud}, built with web3 tooling.",
    "Early beta: it {verb} {obj} on the blockchain with near-zero fees.",
    "Side project turned startup: a {noun} for {aud} who care about {obj}.",
    "Uses {dom} to make {obj} cheaper for {aud}.",
    "Next milestone: {dom2} support and a public {noun}.",
]
COMMENT_TEMPLATES = [
    "Love the {noun}! How do you handle {obj}?",
    "Great work. Is the {dom} part open source?",
    "This could change how {aud} deal with {obj}.",
    "Upvoted. Would pay for this.",
    "Any plans for a {dom} integration?",
    "The demo is slick but onboarding needs work.",
    "How is this different from other {dom} projects?",
    "Congrats on the launch!",
    "Tried it this morning, the {noun} is fast.",
    "What is the business model for {aud}?",
    "We built something similar for {obj}, happy to compare notes.",
    "Does the {noun} work offline?",
]
MESSAGE_TEMPLATES = [
    "Hey, saw your {dom} project, want to chat?",
    "Thanks for the intro!",
    "Are you free for a call on {day}?",
    "Sent you the deck.",
    "Love what you are building for {aud}.",
    "Can you share the repo?",
    "Let's sync next week about {obj}.",
    "Happy to help with the {dom} side.",
    "Did you see the new {noun} release?",
    "Sounds good, talk soon.",
]
POST_TITLE_TEMPLATES = [
    "How we scaled our {dom} {noun}",
    "Ask: best {noun} for {obj}?",
    "Show: a {adj} {noun} for {aud}",
    "Weekly {dom} thread",
    "{dom} meetup notes",
    "Hiring: {dom} engineers",
    "Lessons from building {obj} tooling",
    "Is {dom} overhyped?",
    "Postmortem: our {noun} outage",
    "Roadmap: {dom2} support",
]


class SeedError(RuntimeError):
    """Seeding refused or failed; the message says why and what to run."""


@dataclass(frozen=True)
class TableLoad:
    rows: int
    seconds: float


@dataclass
class SeedReport:
    """What a seed run did: rows and seconds per table, the derived steps, totals."""

    scale: str
    seed: int
    anchor: datetime
    tables: dict[str, TableLoad] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)  # indexes, foreign keys, backfill, refresh <view>, ...
    total_seconds: float = 0.0
    database_bytes: int = 0
    triggers_disabled_by: str = "session_replication_role"


# ---------------------------------------------------------------------------
# Text pools: built in Python from the word lists, deterministic per seed
# ---------------------------------------------------------------------------


_ARTICLE_RE = re.compile(r"\b([Aa]) ([aeiouAEIOU])")  # "a oracle" -> "an oracle"


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _fill(template: str, seed: int, tag: str, i: int) -> str:
    def pick(words: list[str], slot: str) -> str:
        return words[_h(seed, tag, i, slot) % len(words)]

    dom = pick(DOMAINS, "dom")
    dom2 = DOMAINS[(DOMAINS.index(dom) + 1 + _h(seed, tag, i, "dom2") % (len(DOMAINS) - 1)) % len(DOMAINS)]
    return template.format(
        adj=pick(ADJECTIVES, "adj").lower(), noun=pick(NOUNS, "noun").lower(), verb=pick(VERBS, "verb"),
        obj=pick(OBJECTS, "obj"), aud=pick(AUDIENCES, "aud"), dom=dom, dom2=dom2, day=pick(WEEKDAYS, "day"),
    )


def _pool(templates: list[str], size: int, seed: int, tag: str) -> list[str]:
    """``size`` sentences: every template in turn, filled with hash-picked words."""
    return [_ARTICLE_RE.sub(r"\1n \2", _fill(templates[i % len(templates)], seed, tag, i)) for i in range(size)]


def text_pools(seed: int) -> dict[str, list[str]]:
    """Name -> word list; each becomes ``pg_temp.w_<name>(n, salt)`` in SQL."""
    return {
        "first": FIRST_NAMES,
        "last": LAST_NAMES,
        "domain": DOMAINS,
        "adjective": ADJECTIVES,
        "noun": NOUNS,
        "group": GROUPS,
        "firm": FIRM_WORDS,
        "title": INVESTOR_TITLES,
        "location": LOCATIONS,
        "stage": STAGES,
        "brand_start": BRAND_STARTS,
        "brand_end": BRAND_ENDS,
        # Sentence pools stay small: Postgres walks a text[] to reach element i.
        "sentence": _pool(DESCRIPTION_TEMPLATES, 240, seed, "desc"),
        "comment": _pool(COMMENT_TEMPLATES, 120, seed, "comment"),
        "message": _pool(MESSAGE_TEMPLATES, 100, seed, "message"),
        "post_title": _pool(POST_TITLE_TEMPLATES, 120, seed, "post"),
    }


def id_prefix(seed: int, table: str) -> str:
    """The first 24 characters of every id in ``table`` (version-4 and variant bits set)."""
    h = hashlib.blake2b(f"{seed}:{table}".encode(), digest_size=10).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-"


# ---------------------------------------------------------------------------
# Arithmetic shared by Python (chunking, checks) and SQL
# ---------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _next_prime(n: int) -> int:
    while not _is_prime(n):
        n += 1
    return n


def _prev_prime(n: int) -> int:
    while not _is_prime(n):
        n -= 1
    return n


def prime_ladder(lmin: int, lmax: int) -> list[int]:
    """LADDER_STEPS primes, geometric from >= lmin to the largest prime <= lmax.

    A parent's children pick distinct users by stepping through a window of
    prime size W with a stride in 1..W-1: ``(start + j * stride) mod W`` never
    repeats for j < W. Rung m is at least ``lmin * ratio**m``, so the rung the
    SQL computes for a child count c is at least c.
    """
    lmin = max(2, min(lmin, lmax))
    ratio = (lmax / lmin) ** (1 / (LADDER_STEPS - 1))
    rungs = [_next_prime(math.ceil(lmin * ratio**m)) for m in range(LADDER_STEPS - 1)]
    rungs.append(_prev_prime(lmax))
    return [min(r, rungs[-1]) if i < LADDER_STEPS - 1 else r for i, r in enumerate(rungs)]


def _cumulative(n_children: int, n_parents: int, beta: float, r: int) -> int:
    """Children given to parents of rank < r (SQL computes the same)."""
    return math.floor(n_children * (r / n_parents) ** beta)


def _chunks(n_children: int, n_parents: int, beta: float) -> list[tuple[int, int]]:
    """Parent-rank ranges [lo, hi) holding about CHUNK_ROWS children each."""
    bounds = [0]
    target = CHUNK_ROWS
    while target < n_children:
        r = min(n_parents, math.ceil(n_parents * (target / n_children) ** (1 / beta)))
        if r > bounds[-1]:
            bounds.append(r)
        target += CHUNK_ROWS
    if bounds[-1] != n_parents:
        bounds.append(n_parents)
    return list(zip(bounds, bounds[1:], strict=False))


@dataclass(frozen=True)
class Plan:
    """Derived constants of one run (all plain numbers, safe to inline into SQL)."""

    scale: Scale
    seed: int
    anchor_epoch: float
    investor_step: int
    chain_owner_pool: int  # users created before the first chain: chain owners come from these
    initiators: int  # users who start conversations (partners always have a higher index)

    @classmethod
    def make(cls, scale: Scale, seed: int, anchor: datetime) -> Plan:
        if scale.users < 3 * scale.investors or scale.users < 20:
            raise SeedError("a scale needs at least 20 users and 3 users per investor")
        if max(scale.projects, scale.chain_posts, scale.conversations, scale.chains) >= PERMUTATION_PRIME:
            raise SeedError(f"tables of {PERMUTATION_PRIME:,} rows or more need a larger PERMUTATION_PRIME")
        # Chains start 360 days before the anchor; users 400 (see pg_temp.user_ago).
        pool = 4 + math.floor((scale.users - 4) * (39 / 399) ** 2)
        return cls(
            scale=scale,
            seed=seed,
            anchor_epoch=anchor.timestamp(),
            investor_step=3 * max(1, scale.users // (3 * scale.investors)),
            chain_owner_pool=max(4, pool),
            initiators=scale.users // 2,
        )

    def check_pair_room(self, table: str, n_children: int, n_parents: int, room: int) -> None:
        """The busiest parent (rank 0) must find enough distinct users in the largest window."""
        top = _cumulative(n_children, n_parents, BETA[table], 1)
        if top > _prev_prime(room):
            raise SeedError(f"{table}: the busiest parent would need {top} distinct users but only {room} fit")


# ---------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------

# Session helpers, created in pg_temp (gone when the session ends). Inlinable
# SQL functions: the planner folds them into each INSERT ... SELECT.
HELPERS_SQL = """
CREATE FUNCTION pg_temp.hint(n bigint, salt int, m bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT mod(hashint8extended(n, %(seed)s::bigint * 1000 + salt) & 9223372036854775807, m) $$;

CREATE FUNCTION pg_temp.u01(n bigint, salt int) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(n, %(seed)s::bigint * 1000 + salt) & 4503599627370495)::float8 / 4503599627370496.0 $$;

CREATE FUNCTION pg_temp.at(days_ago float8) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_timestamp(%(anchor_epoch)s::float8 - days_ago * 86400.0) $$;

-- Users: the first four (alice, bob, admin and one builder) first, then spread over 400..1 days ago, denser towards the anchor.
CREATE FUNCTION pg_temp.user_ago(k bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN k <= 4 THEN 420.0
                  ELSE 400.0 - 399.0 * sqrt((k - 4)::float8 / (%(users)s - 4)) END $$;

CREATE FUNCTION pg_temp.project_ago(j bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 365.0 - 365.0 * sqrt((j - 1)::float8 / %(projects)s) $$;

CREATE FUNCTION pg_temp.chain_ago(c bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 360.0 - 330.0 * sqrt((c - 1)::float8 / %(chains)s) $$;

-- Investor i is user 2 + (i - 1) * step (bob is investor 1); step is a multiple of 3,
-- so investors (k = 2 mod 3) never collide with builders (k = 1 mod 3).
CREATE FUNCTION pg_temp.investor_user(i bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 2 + (i - 1) * %(investor_step)s::bigint $$;

CREATE FUNCTION pg_temp.investor_ago(i bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_temp.user_ago(pg_temp.investor_user(i)) * (1.0 - 0.5 * pg_temp.u01(i, 701)) $$;

-- The owner of project j: a builder (k = 3b + 1, b Zipf-like, so older builders are more
-- prolific) who signed up at least a day before the project: k <= K = 4 + (U - 4) * ((399 - ago) / 399)^2.
-- One expression (no FROM), so the planner inlines it.
CREATE FUNCTION pg_temp.project_owner(j bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT 3 * floor((floor((3 + floor((%(users)s - 4) * ((399.0 - pg_temp.project_ago(j)) / 399.0) ^ 2)) / 3) + 1)
                 * pg_temp.u01(j, 301) ^ 2)::bigint + 1
$$;

CREATE FUNCTION pg_temp.project_of_rank(r bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + mod(r * %(prime)s::bigint, %(projects)s) $$;

CREATE FUNCTION pg_temp.post_of_rank(r bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + mod(r * %(prime)s::bigint, %(chain_posts)s) $$;

CREATE FUNCTION pg_temp.chain_of_rank(r bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + mod(r * %(prime)s::bigint, %(chains)s) $$;

CREATE FUNCTION pg_temp.chain_owner(c bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + pg_temp.hint(c, 201, %(chain_owner_pool)s) $$;

-- A Zipf-like rank in [0, n): P(rank < x) = (x / n) ** beta.
CREATE FUNCTION pg_temp.zipf(key bigint, salt int, n bigint, beta float8) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT least(n - 1, floor(n * pg_temp.u01(key, salt) ^ (1.0 / beta)))::bigint $$;

-- Active users: rank floor(U * u^2), so the oldest users write the most.
CREATE FUNCTION pg_temp.active_user(key bigint, salt int) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1 + floor(%(users)s * pg_temp.u01(key, salt) ^ 2)::bigint $$;
"""

# Parents of rank [r_lo, r_hi), each with its share of n children: lo..hi-1 are the
# global (0-based) indexes of its children. Used as FROM (...) par.
PARENTS_SQL = """
SELECT r, lo, hi - lo AS cnt
FROM (SELECT r,
             floor(%(n)s * power(r::float8 / %(p)s, %(beta)s))::bigint AS lo,
             floor(%(n)s * power((r + 1)::float8 / %(p)s, %(beta)s))::bigint AS hi
      FROM generate_series(%(r_lo)s::bigint, %(r_hi)s::bigint - 1) AS r) f
"""

# Adds the window (a prime from the ladder, never below the parent's child count,
# otherwise log-uniform) used to pick distinct users for that parent's children.
WINDOWED_PARENTS_SQL = """
SELECT par.*, 1 + pg_temp.hint(r, %(salt)s + 2, w - 1) AS stride
FROM (
    SELECT par.*,
           (%(ladder)s::bigint[])[1 + greatest(
               floor(%(steps)s * pg_temp.u01(r, %(salt)s + 1))::int,
               CASE WHEN cnt <= %(lmin)s THEN 0
                    ELSE least(%(steps)s - 1, ceil(ln(cnt::float8 / %(lmin)s) / ln(%(ratio)s) + 1e-9)::int) END
           )] AS w
    FROM ({parents}) par
) par
"""

USERS_SQL = """
INSERT INTO users (id, username, name, email, role, is_admin, bio, is_deleted, created_at, updated_at)
SELECT pg_temp.id_users(k), username, name, username || '@example.com',
       CASE WHEN k >= 2 AND mod(k - 2, %(investor_step)s) = 0 AND (k - 2) / %(investor_step)s < %(investors)s
                THEN 'investor'
            WHEN mod(k, 3) = 1 THEN 'builder'
            ELSE 'member' END,
       k = 3,
       pg_temp.w_sentence(k, 103),
       k > 6 AND pg_temp.u01(k, 104) < 0.003,
       pg_temp.at(ago), pg_temp.at(ago * (1.0 - pg_temp.u01(k, 105) ^ 4))
FROM (SELECT k, ago,
             CASE k WHEN 1 THEN 'alice' WHEN 2 THEN 'bob' WHEN 3 THEN 'admin' WHEN 6 THEN 'carol'
                    ELSE lower(first) || '.' || lower(last) || k END AS username,
             CASE k WHEN 1 THEN 'Alice Builder' WHEN 2 THEN 'Bob Investor' WHEN 3 THEN 'Site Admin'
                    WHEN 6 THEN 'Carol Member' ELSE first || ' ' || last END AS name
      FROM (SELECT k, pg_temp.user_ago(k) AS ago, pg_temp.w_first(k, 101) AS first, pg_temp.w_last(k, 102) AS last
            FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS k) g) u
ORDER BY k
"""

CHAINS_SQL = """
INSERT INTO chains (id, slug, name, description, owner_id, is_deleted, created_at, updated_at)
SELECT pg_temp.id_chains(c),
       lower(regexp_replace(name, '[^A-Za-z0-9]+', '-', 'g')) || '-' || c,
       name,
       pg_temp.w_sentence(c, 203) || ' ' || pg_temp.w_sentence(c, 204),
       pg_temp.id_users(pg_temp.chain_owner(c)),
       c > 3 AND pg_temp.u01(c, 205) < 0.01,
       pg_temp.at(pg_temp.chain_ago(c)), pg_temp.at(pg_temp.chain_ago(c))
FROM (SELECT c, pg_temp.w_domain(c, 201) || ' ' || pg_temp.w_group(c, 202) AS name
      FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS c) g
ORDER BY c
"""

# Member 0 of every chain is its owner (the window starts at the owner's rank).
CHAIN_MEMBERS_SQL = """
INSERT INTO chain_members (chain_id, user_id, role, created_at)
SELECT pg_temp.id_chains(c), pg_temp.id_users(k),
       CASE WHEN j = 0 THEN 'owner' WHEN j <= 2 THEN 'moderator' ELSE 'member' END,
       pg_temp.at(CASE WHEN j = 0 THEN pg_temp.chain_ago(c)
                       ELSE least(pg_temp.chain_ago(c), pg_temp.user_ago(k)) * (1.0 - pg_temp.u01(lo + j, 231) ^ 2) END)
FROM (SELECT par.*, pg_temp.chain_of_rank(r) AS c FROM ({windowed}) par) par
CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j
CROSS JOIN LATERAL (SELECT 1 + mod(pg_temp.chain_owner(c) - 1 + j * stride, w) AS k) u
"""

PROJECTS_SQL = """
INSERT INTO projects (id, user_id, chain_id, title, description, tags, url, is_deleted, created_at, updated_at)
SELECT pg_temp.id_projects(j), pg_temp.id_users(pg_temp.project_owner(j)),
       CASE WHEN pg_temp.u01(j, 306) < 0.3 THEN pg_temp.id_chains(pg_temp.chain_of_rank(
           pg_temp.zipf(j, 307, %(chains)s, 0.4))) END,
       title,
       pg_temp.w_sentence(j, 303) || ' ' || pg_temp.w_sentence(j, 304) || ' ' || pg_temp.w_sentence(j, 305),
       ARRAY[lower(dom), lower(dom2)],
       CASE WHEN pg_temp.u01(j, 308) < 0.6
            THEN 'https://' || lower(regexp_replace(title, '[^A-Za-z0-9]+', '-', 'g')) || '-' || j || '.example.com' END,
       pg_temp.u01(j, 309) < 0.02,
       pg_temp.at(pg_temp.project_ago(j)),
       pg_temp.at(pg_temp.project_ago(j) * (1.0 - pg_temp.u01(j, 310) ^ 4))
FROM (SELECT j, dom,
             CASE WHEN pg_temp.u01(j, 314) < 0.7
                  THEN pg_temp.w_brand_start(j, 315) || pg_temp.w_brand_end(j, 316) || ': ' ELSE '' END
             || pg_temp.w_adjective(j, 311) || ' ' || dom || ' ' || pg_temp.w_noun(j, 312) AS title,
             (%(domains)s::text[])[1 + mod(array_position(%(domains)s::text[], dom) + pg_temp.hint(j, 313, %(n_domains)s - 1),
                                          %(n_domains)s)] AS dom2
      FROM (SELECT j, pg_temp.w_domain(j, 302) AS dom
            FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS j) g) p
ORDER BY j
"""

PROJECT_UPVOTES_SQL = """
INSERT INTO project_upvotes (user_id, project_id, created_at)
SELECT pg_temp.id_users(k), pg_temp.id_projects(pj),
       pg_temp.at(least(pg_temp.user_ago(k), pg_temp.project_ago(pj)) * (1.0 - pg_temp.u01(lo + j, 401) ^ 3))
FROM (SELECT par.*, pg_temp.project_of_rank(r) AS pj FROM ({windowed}) par) par
CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j
CROSS JOIN LATERAL (SELECT 1 + mod(pg_temp.hint(r, 402, w) + j * stride, w) AS k) u
"""

PROJECT_COMMENTS_SQL = """
INSERT INTO project_comments (id, project_id, user_id, body, is_deleted, created_at, updated_at)
SELECT pg_temp.id_project_comments(n + 1), pg_temp.id_projects(pj), pg_temp.id_users(k),
       pg_temp.w_comment(n, 501) || CASE WHEN pg_temp.u01(n, 502) < 0.3 THEN ' ' || pg_temp.w_sentence(n, 503) ELSE '' END,
       pg_temp.u01(n, 504) < 0.01,
       pg_temp.at(ago), pg_temp.at(ago)
FROM (SELECT n, pj, k, least(pg_temp.user_ago(k), pg_temp.project_ago(pj)) * (1.0 - pg_temp.u01(n, 505) ^ 3) AS ago
      FROM (SELECT lo + j AS n, pg_temp.project_of_rank(r) AS pj, pg_temp.active_user(lo + j, 506) AS k
            FROM ({parents}) par CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j) c) c
ORDER BY n
"""

# The first `chains` posts go one to each chain (every forum has a post; a third of them pinned).
CHAIN_POSTS_SQL = """
INSERT INTO chain_posts (id, chain_id, user_id, title, body, is_pinned, is_deleted, created_at, updated_at)
SELECT pg_temp.id_chain_posts(n), pg_temp.id_chains(c), pg_temp.id_users(k),
       pg_temp.w_post_title(n, 601),
       pg_temp.w_sentence(n, 602) || ' ' || pg_temp.w_comment(n, 603) || ' ' || pg_temp.w_sentence(n, 604),
       n <= %(chains)s AND mod(n, 3) = 1,
       n > %(chains)s AND pg_temp.u01(n, 605) < 0.01,
       pg_temp.at(ago), pg_temp.at(ago * (1.0 - pg_temp.u01(n, 606) ^ 4))
FROM (SELECT n, c, k,
             least(pg_temp.chain_ago(c), pg_temp.user_ago(k)) * (1.0 - pg_temp.u01(n, 607) ^ 1.5) AS ago
      FROM (SELECT n,
                   CASE WHEN n <= %(chains)s THEN n
                        ELSE pg_temp.chain_of_rank(pg_temp.zipf(n, 608, %(chains)s, 0.4)) END AS c,
                   pg_temp.active_user(n, 609) AS k
            FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS n) g) p
ORDER BY n
"""

# Post times are recomputed from the same hashes (pg_temp.post_ago) so votes and
# comments never predate their post.
POST_AGO_SQL = """
CREATE FUNCTION pg_temp.post_ago(n bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT least(pg_temp.chain_ago(CASE WHEN n <= %(chains)s THEN n
                                    ELSE pg_temp.chain_of_rank(pg_temp.zipf(n, 608, %(chains)s, 0.4)) END),
             pg_temp.user_ago(pg_temp.active_user(n, 609))) * (1.0 - pg_temp.u01(n, 607) ^ 1.5)
$$
"""

POST_UPVOTES_SQL = """
INSERT INTO post_upvotes (user_id, post_id, created_at)
SELECT pg_temp.id_users(k), pg_temp.id_chain_posts(pn),
       pg_temp.at(least(pg_temp.user_ago(k), pg_temp.post_ago(pn)) * (1.0 - pg_temp.u01(lo + j, 701) ^ 3))
FROM (SELECT par.*, pg_temp.post_of_rank(r) AS pn FROM ({windowed}) par) par
CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j
CROSS JOIN LATERAL (SELECT 1 + mod(pg_temp.hint(r, 702, w) + j * stride, w) AS k) u
"""

POST_COMMENTS_SQL = """
INSERT INTO post_comments (id, post_id, user_id, body, is_deleted, created_at, updated_at)
SELECT pg_temp.id_post_comments(n + 1), pg_temp.id_chain_posts(pn), pg_temp.id_users(k),
       pg_temp.w_comment(n, 801), pg_temp.u01(n, 802) < 0.01, pg_temp.at(ago), pg_temp.at(ago)
FROM (SELECT n, pn, k, least(pg_temp.user_ago(k), pg_temp.post_ago(pn)) * (1.0 - pg_temp.u01(n, 803) ^ 3) AS ago
      FROM (SELECT lo + j AS n, pg_temp.post_of_rank(r) AS pn, pg_temp.active_user(lo + j, 804) AS k
            FROM ({parents}) par CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j) c) c
ORDER BY n
"""

# Initiator a (rank r = a - 1, older users start more conversations) talks to partners
# a + 1 + (distinct window offsets), so every pair (a, b) has a < b and is unique.
# Kept in a temp table: messages need each conversation's two users and time.
CONVERSATIONS_TEMP_SQL = """
CREATE TEMP TABLE seed_conversations ON COMMIT DROP AS
SELECT lo + j + 1 AS n, r + 1 AS a, r + 2 + mod(pg_temp.hint(r, 902, w) + j * stride, w) AS b,
       0.0::float8 AS ago
FROM ({windowed}) par
CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j
"""

CONVERSATIONS_SQL = """
UPDATE seed_conversations
SET ago = least(pg_temp.user_ago(a), pg_temp.user_ago(b)) * (1.0 - pg_temp.u01(n, 903) ^ 2);
ALTER TABLE seed_conversations ADD PRIMARY KEY (n);
INSERT INTO conversations (id, user1_id, user2_id, is_deleted, created_at, updated_at)
SELECT pg_temp.id_conversations(n), pg_temp.id_users(a), pg_temp.id_users(b),
       pg_temp.u01(n, 904) < 0.01, pg_temp.at(ago), pg_temp.at(ago * (1.0 - pg_temp.u01(n, 905)))
FROM seed_conversations
ORDER BY n
"""

# Messages of a conversation are spread from its start to the anchor in order;
# the first is from the initiator; recent messages are often unread.
MESSAGES_SQL = """
INSERT INTO messages (id, conversation_id, sender_id, body, is_read, is_deleted, created_at, updated_at)
SELECT pg_temp.id_messages(m + 1), pg_temp.id_conversations(sc.n),
       pg_temp.id_users(CASE WHEN j = 0 OR pg_temp.u01(m, 1001) < 0.5 THEN sc.a ELSE sc.b END),
       pg_temp.w_message(m, 1002),
       t.msg_ago > 3.0 OR pg_temp.u01(m, 1003) < 0.4,
       pg_temp.u01(m, 1004) < 0.005,
       pg_temp.at(t.msg_ago), pg_temp.at(t.msg_ago)
FROM (SELECT lo + j AS m, j, cnt, 1 + mod(r * %(prime)s::bigint, %(conversations)s) AS cn
      FROM ({parents}) par CROSS JOIN LATERAL generate_series(0, cnt - 1) AS j) g
JOIN seed_conversations sc ON sc.n = g.cn
CROSS JOIN LATERAL (SELECT sc.ago * (1.0 - sqrt((j + pg_temp.u01(m, 1005)) / cnt)) AS msg_ago) t
ORDER BY m
"""

INVESTORS_SQL = """
INSERT INTO investors (id, user_id, firm_name, title, bio, focus_areas, stages, check_size_min, check_size_max,
                       location, is_accepting_intros, is_deleted, created_at, updated_at)
SELECT pg_temp.id_investors(i), pg_temp.id_users(pg_temp.investor_user(i)),
       CASE WHEN i = 1 THEN 'Bob Ventures' ELSE pg_temp.w_last(i, 1101) || ' ' || pg_temp.w_firm(i, 1102) END,
       pg_temp.w_title(i, 1103),
       pg_temp.w_sentence(i, 1104) || ' ' || pg_temp.w_sentence(i, 1105),
       ARRAY[lower(pg_temp.w_domain(i, 1106)), lower(pg_temp.w_domain(i + 7919, 1106))],
       ARRAY[(%(stages)s::text[])[1 + st], (%(stages)s::text[])[1 + mod(st + 1, %(n_stages)s)]],
       check_min, check_min * (2 + pg_temp.hint(i, 1108, 8)),
       pg_temp.w_location(i, 1109),
       i = 1 OR pg_temp.u01(i, 1110) < 0.85,
       i > 1 AND pg_temp.u01(i, 1111) < 0.01,
       pg_temp.at(pg_temp.investor_ago(i)), pg_temp.at(pg_temp.investor_ago(i))
FROM (SELECT i, pg_temp.hint(i, 1107, %(n_stages)s) AS st, 25000 * (1 + pg_temp.hint(i, 1112, 40)) AS check_min
      FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS i) g
ORDER BY i
"""

# A builder asks an investor for an intro about one of their own projects.
INTRO_REQUESTS_SQL = """
INSERT INTO intro_requests (id, requester_id, investor_id, project_id, message, status, is_deleted, responded_at,
                            created_at, updated_at)
SELECT pg_temp.id_intro_requests(n), pg_temp.id_users(pg_temp.project_owner(pj)), pg_temp.id_investors(i),
       pg_temp.id_projects(pj),
       pg_temp.w_message(n, 1201) || ' ' || pg_temp.w_sentence(n, 1202),
       status, pg_temp.u01(n, 1203) < 0.01,
       CASE WHEN status IN ('accepted', 'declined') THEN pg_temp.at(ago * (1.0 - 0.3 * pg_temp.u01(n, 1204))) END,
       pg_temp.at(ago), pg_temp.at(ago)
FROM (SELECT n, pj, i, least(pg_temp.project_ago(pj), pg_temp.investor_ago(i)) * (1.0 - pg_temp.u01(n, 1205) ^ 2) AS ago,
             CASE WHEN s < 0.35 THEN 'pending' WHEN s < 0.6 THEN 'accepted' WHEN s < 0.9 THEN 'declined'
                  ELSE 'withdrawn' END AS status
      FROM (SELECT n, pg_temp.project_of_rank(pg_temp.zipf(n, 1206, %(projects)s, 0.55)) AS pj,
                   1 + pg_temp.zipf(n, 1207, %(investors)s, 0.5) AS i, pg_temp.u01(n, 1208) AS s
            FROM generate_series(%(lo)s::bigint + 1, %(hi)s::bigint) AS n) g) r
ORDER BY n
"""


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


class _Notices(list):
    """psycopg2 appends each server NOTICE to ``conn.notices``; forward it instead."""

    def __init__(self, out: Callable[[str], None]) -> None:
        super().__init__()
        self._out = out

    def append(self, message: str) -> None:  # type: ignore[override]
        self._out(message.rstrip("\n"))


def _fmt(n: int) -> str:
    return f"{n:,}"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class _Loader:
    def __init__(self, conn: psycopg2.extensions.connection, plan: Plan, out: Callable[[str], None]) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.plan = plan
        self.out = out
        s = plan.scale
        self.params: dict[str, object] = {f.name: getattr(s, f.name) for f in fields(s)}
        self.params.update(
            seed=plan.seed, anchor_epoch=plan.anchor_epoch, investor_step=plan.investor_step,
            chain_owner_pool=plan.chain_owner_pool, prime=PERMUTATION_PRIME, steps=LADDER_STEPS,
            domains=DOMAINS, n_domains=len(DOMAINS), stages=STAGES, n_stages=len(STAGES),
        )

    def execute(self, statement: str | sql.Composable, params: dict[str, object] | None = None) -> int:
        self.cur.execute(statement, {**self.params, **(params or {})})
        return self.cur.rowcount

    def create_helpers(self, pools: dict[str, list[str]]) -> None:
        self.execute(HELPERS_SQL)
        for table in BASE_TABLES:
            self.execute(
                sql.SQL(
                    "CREATE FUNCTION pg_temp.{}(k bigint) RETURNS uuid LANGUAGE sql IMMUTABLE PARALLEL SAFE "
                    "AS $$ SELECT ({} || lpad(to_hex(k), 12, '0'))::uuid $$"
                ).format(sql.Identifier(f"id_{table}"), sql.Literal(id_prefix(self.plan.seed, table)))
            )
        for name, words in pools.items():
            self.execute(
                sql.SQL(
                    "CREATE FUNCTION pg_temp.{}(n bigint, salt int) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE "
                    "AS $$ SELECT ({}::text[])[1 + pg_temp.hint(n, salt, {})] $$"
                ).format(sql.Identifier(f"w_{name}"), sql.Literal(words), sql.Literal(len(words)))
            )

    def windowed(self, table: str, n_children: int, n_parents: int, lmin: int, lmax: int, salt: int,
                 r_lo: int, r_hi: int) -> tuple[str, dict[str, object]]:
        ladder = prime_ladder(lmin, lmax)
        ratio = (lmax / max(2, min(lmin, lmax))) ** (1 / (LADDER_STEPS - 1))
        params = {"n": n_children, "p": n_parents, "beta": BETA[table], "r_lo": r_lo, "r_hi": r_hi,
                  "ladder": ladder, "lmin": max(2, min(lmin, lmax)), "ratio": ratio, "salt": salt}
        return WINDOWED_PARENTS_SQL.format(parents=PARENTS_SQL), params

    def load(self, table: str, total: int, run: Callable[[int, int], int], chunks: Iterable[tuple[int, int]]) -> TableLoad:
        """Run ``run(lo, hi)`` per chunk, printing progress for big tables."""
        started = time.monotonic()
        rows = 0
        chunks = list(chunks)
        for lo, hi in chunks:
            rows += run(lo, hi)
            if len(chunks) > 1:
                self.out(f"  {table}: {_fmt(rows)} / {_fmt(total)} rows ({100 * rows // max(total, 1)}%) "
                         f"{time.monotonic() - started:.1f} s")
        seconds = time.monotonic() - started
        self.out(f"{table}: {_fmt(rows)} rows in {seconds:.1f} s")
        return TableLoad(rows, seconds)


    def flat(self, table: str, statement: str, total: int) -> TableLoad:
        """A table whose rows are 1..total, loaded in ranges of CHUNK_ROWS."""
        ranges = [(lo, min(total, lo + CHUNK_ROWS)) for lo in range(0, total, CHUNK_ROWS)] or [(0, 0)]
        return self.load(table, total, lambda lo, hi: self.execute(statement, {"lo": lo, "hi": hi}), ranges)

    def nested(self, table: str, statement: str, n_parents: int, window: tuple[int, int, int] | None) -> TableLoad:
        """A table whose rows are shared out among n_parents by power law, chunked by parent rank.

        ``window`` = (lmin, lmax, salt) when each parent's children need distinct users.
        """
        n_children = getattr(self.plan.scale, table)
        if window is not None:
            self.plan.check_pair_room(table, n_children, n_parents, window[1])

        def run(r_lo: int, r_hi: int) -> int:
            if window is None:
                params = {"n": n_children, "p": n_parents, "beta": BETA[table], "r_lo": r_lo, "r_hi": r_hi}
                # sql-safe: a template constant of this module completed with PARENTS_SQL
                return self.execute(statement.format(parents=PARENTS_SQL), params)
            windowed, params = self.windowed(table, n_children, n_parents, *window, r_lo, r_hi)
            # sql-safe: a template constant completed with WINDOWED_PARENTS_SQL (constants; values bound)
            return self.execute(statement.format(windowed=windowed), params)

        return self.load(table, n_children, run, _chunks(n_children, n_parents, BETA[table]))

    def load_all(self) -> dict[str, TableLoad]:
        s, p = self.plan.scale, self.plan
        loads: dict[str, TableLoad] = {}
        loads["users"] = self.flat("users", USERS_SQL, s.users)
        loads["chains"] = self.flat("chains", CHAINS_SQL, s.chains)
        # The window must reach past every possible chain owner (member 0 of each chain).
        loads["chain_members"] = self.nested(
            "chain_members", CHAIN_MEMBERS_SQL, s.chains, (max(p.chain_owner_pool + 1, s.users // 100), s.users, 220))
        loads["projects"] = self.flat("projects", PROJECTS_SQL, s.projects)
        loads["project_upvotes"] = self.nested(
            "project_upvotes", PROJECT_UPVOTES_SQL, s.projects, (s.users // 100, s.users, 410))
        loads["project_comments"] = self.nested("project_comments", PROJECT_COMMENTS_SQL, s.projects, None)
        loads["chain_posts"] = self.flat("chain_posts", CHAIN_POSTS_SQL, s.chain_posts)
        self.execute(POST_AGO_SQL)
        loads["post_upvotes"] = self.nested(
            "post_upvotes", POST_UPVOTES_SQL, s.chain_posts, (s.users // 100, s.users, 710))
        loads["post_comments"] = self.nested("post_comments", POST_COMMENTS_SQL, s.chain_posts, None)

        started = time.monotonic()
        room = s.users - p.initiators - 1
        p.check_pair_room("conversations", s.conversations, p.initiators, room)
        windowed, params = self.windowed("conversations", s.conversations, p.initiators, room // 100, room, 910,
                                         0, p.initiators)
        # sql-safe: CONVERSATIONS_TEMP_SQL completed with WINDOWED_PARENTS_SQL (constants; values bound)
        self.execute(CONVERSATIONS_TEMP_SQL.format(windowed=windowed), params)
        rows = self.execute(CONVERSATIONS_SQL)
        loads["conversations"] = TableLoad(rows, time.monotonic() - started)
        self.out(f"conversations: {_fmt(rows)} rows in {loads['conversations'].seconds:.1f} s")
        self.execute("ANALYZE seed_conversations")
        loads["messages"] = self.nested("messages", MESSAGES_SQL, s.conversations, None)
        self.execute("DROP TABLE seed_conversations")

        loads["investors"] = self.flat("investors", INVESTORS_SQL, s.investors)
        loads["intro_requests"] = self.flat("intro_requests", INTRO_REQUESTS_SQL, s.intro_requests)
        for table, load in loads.items():
            expected = getattr(s, table)
            if load.rows != expected:  # the arithmetic above is exact; this guards edits to it
                raise SeedError(f"{table}: generated {load.rows} rows, the scale says {expected}")
        return loads


# ---------------------------------------------------------------------------
# Before and after the load
# ---------------------------------------------------------------------------


def _preflight(cur: psycopg2.extensions.cursor, force: bool) -> None:
    """Refuse (SeedError) unless the database is fully migrated and, without force, empty."""
    hint = "run `python -m schema migrate` first"
    cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not cur.fetchone()[0]:
        raise SeedError(f"the database is not migrated (no schema_migrations table); {hint}")
    cur.execute("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname = ANY(%s) "
                "AND relnamespace = 'public'::regnamespace", (list(BASE_TABLES),))
    missing = sorted(set(BASE_TABLES) - {r[0] for r in cur.fetchall()})
    if missing:
        raise SeedError(f"the database is not migrated (missing tables: {', '.join(missing)}); {hint}")
    cur.execute("SELECT name FROM schema_migrations")
    applied = {r[0] for r in cur.fetchall()}
    pending = [m.name for m in discover() if m.name not in applied]
    if pending:
        raise SeedError(f"the database has {len(pending)} pending migration(s) ({', '.join(pending)}); {hint}")
    cur.execute("SELECT count(*) FROM users")
    users = cur.fetchone()[0]
    if users and not force:
        raise SeedError(
            f"the database already has {users:,} users; seed --force truncates the base tables and reseeds "
            "(or seed --if-empty does nothing when there are users)"
        )


def _disable_triggers(cur: psycopg2.extensions.cursor, out: Callable[[str], None]) -> str:
    """Triggers and FK checks off for this transaction; returns how."""
    cur.execute("SAVEPOINT seed_role")
    try:
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute("RELEASE SAVEPOINT seed_role")
        return "session_replication_role"
    except pg_errors.InsufficientPrivilege:
        cur.execute("ROLLBACK TO SAVEPOINT seed_role")
    # Not a superuser: user triggers off per table (foreign keys stay checked, which is slower but
    # still correct: parents are loaded before children).
    out("seed: not allowed to set session_replication_role (not a superuser); "
        "using ALTER TABLE ... DISABLE TRIGGER USER instead (foreign keys stay checked)")
    for table in BASE_TABLES:
        cur.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
    return "ALTER TABLE ... DISABLE TRIGGER USER"


@dataclass(frozen=True)
class _Index:
    table: str
    name: str
    constraint: str | None
    definition: str  # CREATE INDEX ... or the constraint's definition
    foreign_key: bool = False


def _drop_rebuildable_indexes(cur: psycopg2.extensions.cursor) -> list[_Index]:
    """Drop the base tables' foreign keys and the indexes no foreign key needs; return how to rebuild them.

    Building an index once by sorting is far cheaper than maintaining it over
    millions of inserts in random key order. Primary keys that foreign keys
    reference stay (and are filled in key order). Re-adding a foreign key makes
    Postgres check every row at once, so the generated data is proven valid
    even though the load ran without checks. All of this is inside the load
    transaction: a failure puts every index and constraint back.
    """
    cur.execute(
        """
        SELECT t.relname, c.relname, con.conname,
               CASE WHEN con.oid IS NULL THEN pg_get_indexdef(i.indexrelid) ELSE pg_get_constraintdef(con.oid) END
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = t.oid
                                   AND con.contype IN ('p', 'u', 'x')
        WHERE t.relnamespace = 'public'::regnamespace AND t.relname = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint fk WHERE fk.contype = 'f' AND fk.conindid = i.indexrelid)
        ORDER BY t.relname, con.conname IS NULL, c.relname
        """,
        (list(BASE_TABLES),),
    )
    indexes = [_Index(*row) for row in cur.fetchall()]
    cur.execute(
        """
        SELECT t.relname, con.conname, con.conname, pg_get_constraintdef(con.oid), true
        FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid
        WHERE con.contype = 'f' AND t.relnamespace = 'public'::regnamespace AND t.relname = ANY(%s)
        ORDER BY t.relname, con.conname
        """,
        (list(BASE_TABLES),),
    )
    foreign_keys = [_Index(*row) for row in cur.fetchall()]
    for ix in [*foreign_keys, *indexes]:
        if ix.constraint:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(ix.table), sql.Identifier(ix.constraint)))
        else:
            cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(ix.name)))
    return [*indexes, *foreign_keys]


def _rebuild_indexes(cur: psycopg2.extensions.cursor, indexes: list[_Index]) -> None:
    """Indexes and unique constraints first, then foreign keys (each checks all rows)."""
    for ix in indexes:
        try:
            if ix.constraint:
                # sql-safe: the definition was read from the catalog (pg_get_constraintdef), not from input
                cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
                    sql.Identifier(ix.table), sql.Identifier(ix.constraint)) + sql.SQL(ix.definition))
            else:
                cur.execute(sql.SQL(ix.definition))  # sql-safe: read from the catalog (pg_get_indexdef)
        except (pg_errors.ForeignKeyViolation, pg_errors.UniqueViolation) as exc:
            detail = str(exc).strip().splitlines()[0]
            raise SeedError(f"generated data violates {ix.table}.{ix.name} (a generator bug; nothing was "
                            f"written): {detail}") from None


def _backfill_migration() -> Migration | None:
    found = sorted(MIGRATIONS_DIR.glob("*phase1_backfill_data.sql"))
    return Migration.load(found[-1]) if found else None


def _views_in_refresh_order(cur: psycopg2.extensions.cursor) -> list[str]:
    """Every materialized view: registry order (mv_registry.refresh_order) first, dependencies always first."""
    cur.execute("SELECT matviewname FROM pg_matviews WHERE schemaname = 'public' ORDER BY matviewname")
    views = [r[0] for r in cur.fetchall()]
    preferred: list[str] = []
    cur.execute("SELECT to_regclass('mv_registry') IS NOT NULL")
    if cur.fetchone()[0]:
        cur.execute("SELECT count(*) FROM information_schema.columns "
                    "WHERE table_name = 'mv_registry' AND column_name = 'refresh_order'")
        if cur.fetchone()[0]:
            cur.execute("SELECT view_name FROM mv_registry ORDER BY refresh_order, view_name")
        else:
            cur.execute("SELECT view_name FROM mv_registry ORDER BY view_name")
        preferred = [r[0] for r in cur.fetchall() if r[0] in views]
    cur.execute(
        """
        SELECT DISTINCT v.relname, d.relname
        FROM pg_class v
        JOIN pg_rewrite rw ON rw.ev_class = v.oid
        JOIN pg_depend dep ON dep.classid = 'pg_rewrite'::regclass AND dep.objid = rw.oid
        JOIN pg_class d ON d.oid = dep.refobjid
        WHERE v.relkind = 'm' AND d.relkind = 'm' AND d.oid <> v.oid
          AND v.relnamespace = 'public'::regnamespace
        """
    )
    deps: dict[str, set[str]] = {v: set() for v in views}
    for view, dep in cur.fetchall():
        deps.setdefault(view, set()).add(dep)
    ordered = preferred + [v for v in views if v not in preferred]
    sorter = TopologicalSorter({v: deps.get(v, set()) for v in ordered})
    sorter.prepare()
    result: list[str] = []
    while sorter.is_active():
        ready = set(sorter.get_ready())
        for v in [v for v in ordered if v in ready]:  # keep the preferred order among the ready ones
            result.append(v)
            sorter.done(v)
    return [v for v in result if v in views]


def _log_refreshes(cur: psycopg2.extensions.cursor, refreshed: list[tuple[str, datetime, datetime]]) -> None:
    """One completed mv_refresh_log row per view refreshed here.

    The log is how the rest of the system knows a view's contents changed: the
    API keys its response cache on the last completed row ("generation") and
    health reads the last refresh time. A plain REFRESH writes no row itself.
    """
    for view, began, ended in refreshed:
        cur.execute(
            sql.SQL(
                "INSERT INTO mv_refresh_log (view_name, refresh_started_at, refresh_completed_at, duration_ms, "
                "status, requests_cleared, rows_in_view, source, worker) "
                "SELECT %s, %s, %s, %s, 'completed', 0, count(*), 'manual', 'seed' FROM {}"
            ).format(sql.Identifier(view)),
            (view, began, ended, round((ended - began).total_seconds() * 1000)),
        )


def _tables_referencing_base_tables(cur: psycopg2.extensions.cursor) -> list[str]:
    """Other tables a TRUNCATE ... CASCADE of the base tables empties too (named in the output)."""
    cur.execute(
        "SELECT DISTINCT c.conrelid::regclass::text FROM pg_constraint c "
        "WHERE c.contype = 'f' AND c.confrelid::regclass::text = ANY(%s) "
        "AND NOT c.conrelid::regclass::text = ANY(%s) ORDER BY 1",
        (list(BASE_TABLES), list(BASE_TABLES)),
    )
    return [r[0] for r in cur.fetchall()]


def _function_exists(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %s)", (name,))
    return bool(cur.fetchone()[0])


def _table_exists(cur: psycopg2.extensions.cursor, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return bool(cur.fetchone()[0])


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def seed(
    database_url: str,
    scale: str,
    *,
    seed: int = 42,
    force: bool = False,
    out: Callable[[str], None] = print,
    anchor: datetime = DEFAULT_ANCHOR,
) -> SeedReport:
    """Fill a migrated, empty database with the ``scale`` data set for ``seed``.

    Refuses (SeedError, nothing written) when the database is not fully
    migrated, or already has users and ``force`` is not set; with ``force`` the
    base tables are truncated first (CASCADE, so rows of tables referencing
    them go too; the backfill rebuilds the derived ones) in the same
    transaction as the load. Afterwards every derived table and view agrees
    with the base tables and no refresh request is pending.
    """
    if scale not in SCALES:
        raise SeedError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SeedError(f"seed must be an integer, not {seed!r}")
    if anchor.tzinfo is None:
        raise SeedError("anchor must be timezone-aware")
    started = time.monotonic()
    plan = Plan.make(SCALES[scale], seed, anchor)
    report = SeedReport(scale=scale, seed=seed, anchor=anchor)
    pools = text_pools(seed)

    with raw_connection(database_url) as conn:
        conn.notices = _Notices(lambda line: out(f"  {line}"))
        cur = conn.cursor()
        try:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SEED_LOCK_KEY,))
            _preflight(cur, force)
            out(f"seed: scale={scale} seed={seed} anchor={anchor.date().isoformat()} into {conn.info.dbname}")
            # Settings for this transaction only: a bulk load that is redone from scratch if lost.
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute("SET LOCAL work_mem = '256MB'")
            cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
            cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            # JIT compiles each generator statement for ~0.3 s (the planner sees huge row estimates) and then
            # gains little on these expression-heavy inserts.
            cur.execute("SET LOCAL jit = off")
            report.triggers_disabled_by = _disable_triggers(cur, out)
            if force:
                others = _tables_referencing_base_tables(cur)
                cur.execute(sql.SQL("TRUNCATE {} CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(t) for t in BASE_TABLES)))
                out("seed: --force: truncated the base tables"
                    + (f" and, by CASCADE, {', '.join(others)}" if others else ""))
            indexes = _drop_rebuildable_indexes(cur)
            loader = _Loader(conn, plan, out)
            loader.create_helpers(pools)
            report.tables = loader.load_all()

            for label, group in (("indexes", [ix for ix in indexes if not ix.foreign_key]),
                                 ("foreign keys", [ix for ix in indexes if ix.foreign_key])):
                step = time.monotonic()
                _rebuild_indexes(cur, group)
                report.steps[label] = time.monotonic() - step
                verb = "rebuilt" if label == "indexes" else "re-added (every row checked)"
                out(f"{label}: {len(group)} {verb} in {report.steps[label]:.1f} s")

            backfill = _backfill_migration()
            step = time.monotonic()
            if backfill is None:
                out("backfill: no *phase1_backfill_data.sql migration; skipped")
            else:
                try:
                    body = transaction_body(backfill)
                except MigrationError:
                    body = backfill.sql  # a file without BEGIN/COMMIT runs as it is
                out(f"backfill: {backfill.name}")
                cur.execute(body)
                report.steps["backfill"] = time.monotonic() - step
                out(f"backfill: done in {report.steps['backfill']:.1f} s")
            if _function_exists(cur, "backfill_project_stats"):
                step = time.monotonic()
                cur.execute("SELECT backfill_project_stats()")
                rows = cur.fetchone()[0]
                report.steps["backfill project_stats"] = time.monotonic() - step
                out(f"backfill: {rows:,} rows in project_stats in {report.steps['backfill project_stats']:.1f} s")

            refreshed = []
            for view in _views_in_refresh_order(cur):
                step = time.monotonic()
                cur.execute("SELECT clock_timestamp()")
                began = cur.fetchone()[0]
                cur.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(view)))
                cur.execute("SELECT clock_timestamp()")
                refreshed.append((view, began, cur.fetchone()[0]))
                report.steps[f"refresh {view}"] = time.monotonic() - step
                out(f"refresh {view}: {report.steps[f'refresh {view}']:.1f} s")

            # The load fired no request triggers; this clears requests from before a --force.
            if _table_exists(cur, "mv_refresh_requests"):
                cur.execute("DELETE FROM mv_refresh_requests")
            if _table_exists(cur, "mv_refresh_log"):
                _log_refreshes(cur, refreshed)
            if report.triggers_disabled_by != "session_replication_role":
                for table in BASE_TABLES:
                    cur.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(table)))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

        conn.autocommit = True
        step = time.monotonic()
        relations = [*BASE_TABLES, *[t for t in DERIVED_TABLES if _table_exists(cur, t)], *_views_in_refresh_order(cur)]
        for name in relations:
            cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
        report.steps["vacuum analyze"] = time.monotonic() - step
        out(f"vacuum analyze: {len(relations)} relations in {report.steps['vacuum analyze']:.1f} s")
        cur.execute("SELECT pg_database_size(current_database())")
        report.database_bytes = cur.fetchone()[0]

    report.total_seconds = time.monotonic() - started
    _print_summary(report, out)
    return report


def _print_summary(report: SeedReport, out: Callable[[str], None]) -> None:
    width = max(len(name) for name in [*report.tables, *report.steps])
    out("")
    out(f"{'table':<{width}}  {'rows':>11}  {'seconds':>8}")
    for table, load in report.tables.items():
        out(f"{table:<{width}}  {_fmt(load.rows):>11}  {load.seconds:>8.1f}")
    for name, seconds in report.steps.items():
        out(f"{name:<{width}}  {'':>11}  {seconds:>8.1f}")
    total_rows = sum(t.rows for t in report.tables.values())
    out(f"{'total':<{width}}  {_fmt(total_rows):>11}  {report.total_seconds:>8.1f}")
    out(f"database size: {_size(report.database_bytes)} ({report.database_bytes:,} bytes); "
        f"triggers were disabled with {report.triggers_disabled_by}")
