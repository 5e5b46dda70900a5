"""No SQL is built from input: a static check over every product package and its SQL files.

Claims: in api/, tasks/, monitoring/, schema/, beat/ and deploy/, no Python
string that reads as SQL is an f-string, uses .format() or % formatting, or is
concatenated; every sqlalchemy.text() call takes a plain literal; SQL composed
with psycopg2.sql takes identifiers only through sql.Identifier (quoted) and
never a raw ``sql.SQL(variable)``; the few places that compose SQL from the
module's own constants or the catalog carry a ``# sql-safe: <source>`` comment
naming where the text comes from, and the set of those places is pinned here
(a new one fails until it is reviewed and added). Named query files contain
only bound :params (no psycopg2 %s/%()s and no format placeholders); dynamic
SQL in migrations goes through format() with %I/%L or EXECUTE ... USING, never
``||``; and the checker itself catches each bad pattern.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "api"
PACKAGES = ("api", "tasks", "monitoring", "schema", "beat", "deploy")
QUERIES = sorted([*(ROOT / "schema" / "queries").glob("*.sql"), ROOT / "monitoring" / "queries.sql"])
MIGRATIONS = sorted((ROOT / "schema" / "migrations").glob("*.sql"))

# Reviewed places that compose SQL from something other than literals and
# sql.Identifier, each marked "# sql-safe: <where the text comes from>".
SQL_SAFE_MARKERS = {
    "api/db.py": 1,  # PREPARE of a named query's own compiled text
    "schema/db.py": 1,  # the named-query loader: text() of schema/queries/*.sql
    "schema/seed.py": 5,  # templates of the module's own SQL constants; constraint definitions from the catalog
}
MARKER = "# sql-safe:"

# Upper-case SQL anywhere in a string, or a string that starts like a statement in any case.
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s|DROP\s|ALTER\s|REFRESH\s+MATERIALIZED"
    r"|WHERE\s|FROM\s+\w+|VALUES\s*\(|TRUNCATE|PREPARE\s|EXECUTE\s|DEALLOCATE\s)\b"
)
SQL_START = re.compile(
    r"^\s*(select\s+(\*|\w+\s*(,|from\b))|insert\s+into|update\s+\w+\s+set|delete\s+from"
    r"|(create|drop)\s+(or\s+replace\s+|unique\s+)?(table|index|view|materialized|function|database|trigger)"
    r"|alter\s+table|refresh\s+materialized|truncate\s+\w|with\s+\w+\s+as\s*\()",
    re.IGNORECASE,
)


def _looks_like_sql(text: str) -> bool:
    return bool(SQL_WORDS.search(text) or SQL_START.search(text))


def _const_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return ""


def _call_name(node: ast.AST) -> str:
    if not isinstance(node, ast.Call):
        return ""
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _is_composable(node: ast.AST) -> bool:
    """A psycopg2.sql object: SQL("literal"), Identifier(...), Literal(...), or .format/.join of one."""
    name = _call_name(node)
    if name in {"SQL", "Identifier", "Literal", "Placeholder", "Composed"}:
        return True
    if name in {"format", "join"} and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _is_composable(node.func.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_composable(node.left) and _is_composable(node.right)
    return False


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Places where SQL text is assembled from non-literal parts (unless marked # sql-safe)."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    found = []

    statements = [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree) if isinstance(n, ast.stmt)]

    def flag(node: ast.AST, what: str) -> None:
        lineno = getattr(node, "lineno", 0)
        # The marker sits on the line above the innermost statement holding the node, or inside it.
        start, end = max(((a, b) for a, b in statements if a <= lineno <= b), default=(lineno, lineno))
        if not any(MARKER in line for line in lines[max(0, start - 2):end]):
            found.append(f"{filename}:{lineno}: {what}")

    for node in ast.walk(tree):
        # f"SELECT ... {x}"
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            if _looks_like_sql(_const_text(node)):
                flag(node, "f-string SQL")
        # "SELECT ... {}".format(x) / "... %s" % x / "SELECT " + x (psycopg2.sql composition is fine)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            if not _is_composable(node.func.value) and _looks_like_sql(_const_text(node.func.value)):
                flag(node, ".format() SQL")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add) and not _is_composable(node):
            for side in (node.left, node.right):
                if _looks_like_sql(_const_text(side)):
                    flag(node, f"{'%' if isinstance(node.op, ast.Mod) else '+'} on SQL text")
        if isinstance(node, ast.Call):
            name = _call_name(node)
            # text(...) / sa.text(...) with anything but one plain literal
            if name == "text" and node.args:
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    flag(node, "text() with a non-literal argument")
            # sql.SQL(variable): raw SQL text that psycopg2 does not quote
            if name == "SQL" and node.args:
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    flag(node, "sql.SQL() with a non-literal argument")
            # execute("..." built) on a raw cursor
            if name in {"execute", "exec_driver_sql"} and node.args:
                arg = node.args[0]
                built = isinstance(arg, ast.JoinedStr | ast.BinOp) or (
                    isinstance(arg, ast.Call) and getattr(arg.func, "attr", "") == "format")
                if built and not _is_composable(arg):
                    flag(node, f"{name}() with built SQL")
    return found


def api_sources() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if "__pycache__" not in p.parts)


def product_sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", product_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sql_built_from_input(path):
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


def test_sql_safe_markers_are_exactly_the_reviewed_ones():
    markers = {}
    for path in product_sources():
        lines = [line for line in path.read_text().splitlines() if MARKER in line]
        if lines:
            markers[str(path.relative_to(ROOT))] = len(lines)
            # Each marker says where its text comes from.
            assert all(len(line.split(MARKER, 1)[1].strip()) >= 10 for line in lines), lines
    assert markers == SQL_SAFE_MARKERS


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.name)
def test_named_queries_use_only_bound_params(path):
    sql = path.read_text()
    assert "%s" not in sql and "%(" not in sql, "psycopg2 placeholders belong to no named query"
    assert not re.search(r"\{\w*\}", sql), "format placeholders in SQL"
    assert re.search(r"--\s*name:\s*\w+", sql)


DYNAMIC = re.compile(r"\bEXECUTE\s+(?!FUNCTION\b|PROCEDURE\b)(.*?);", re.IGNORECASE | re.DOTALL)


def dynamic_sql_problems(sql: str) -> list[str]:
    """plpgsql dynamic SQL that is not format() with %I/%L or a fixed string with USING."""
    problems = []
    for m in DYNAMIC.finditer(sql):
        body = m.group(1).strip()
        if not (body.startswith("format(") or body.startswith("'")):
            problems.append(f"EXECUTE of a computed string: {body[:60]!r}")
        if "||" in body:
            problems.append(f"EXECUTE of a concatenated string: {body[:60]!r}")
        if body.startswith("format(") and re.search(r"%(?:\d+\$)?s", body):
            problems.append(f"format() with %s (unquoted) in EXECUTE: {body[:60]!r}")
    return problems


@pytest.mark.parametrize("path", MIGRATIONS, ids=lambda p: p.name)
def test_dynamic_sql_in_migrations_quotes_its_identifiers(path):
    code = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())  # comments out
    assert dynamic_sql_problems(code) == []


@pytest.mark.parametrize("bad", [
    "EXECUTE 'REFRESH MATERIALIZED VIEW ' || v;",
    "EXECUTE q;",
    "EXECUTE format('SELECT * FROM %s', t);",
])
def test_the_dynamic_sql_check_catches_each_pattern(bad):
    assert dynamic_sql_problems(bad)


def test_every_named_query_the_api_uses_exists():
    from schema.db import queries

    used = set()
    for path in api_sources():
        src = path.read_text()
        for module in re.findall(r'queries\("(api_\w+)"\)', src):
            used.add(module)
    assert used, "the API loads its SQL from named query files"
    for module in used:
        assert queries(module), module


@pytest.mark.parametrize("bad", [
    'q = f"SELECT * FROM t WHERE id = {x}"',
    'q = "SELECT * FROM t WHERE id = {}".format(x)',
    'q = "SELECT * FROM t WHERE id = %s" % x',
    'q = "SELECT * FROM t WHERE id = " + x',
    'conn.execute(sa.text(f"SELECT {col} FROM t"))',
    'conn.execute(text(query_string))',
    'cur.execute("DELETE FROM " + table)',
    'cur.execute(f"REFRESH MATERIALIZED VIEW {v}")',
    'cur.execute(f"PREPARE {name} AS {body}")',
    'cur.execute(f"EXECUTE {name}")',
    'q = f"select * from t where id = {x}"',
    'cur.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(name)))',
    'cur.execute(sql.SQL(query))',
    'cur.execute(sql.SQL("ALTER TABLE {} ").format(sql.Identifier(t)) + sql.SQL(definition))',
    'cur.execute(template.format(table=t))',
])
def test_the_checker_catches_each_pattern(bad):
    assert violations(bad)


@pytest.mark.parametrize("good", [
    'conn.execute(sa.text("SELECT 1 FROM t WHERE id = :id"), {"id": x})',
    'msg = f"project {pid} not found"',
    'log.warning("could not send %s: %s", name, exc)',
    'q = pgsql.SQL("PREPARE {} AS {}").format(pgsql.Identifier(name), body)',
    'cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))',
    'cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)))',
    'self.out(f"redis: {n} set(s) differ from Postgres; confirming")',
    'cur.execute(template.format(table=t))  # sql-safe: TEMPLATES of this module, names from TABLES',
])
def test_the_checker_lets_plain_code_pass(good):
    assert violations(good) == []
