"""No SQL is built from input: a static check over api/ and its named queries.

Claims: no Python string that reads as SQL is an f-string, uses .format() or %
formatting, or is concatenated; every sqlalchemy.text() call takes a plain
literal; named query files contain only bound :params (no psycopg2 %s/%()s and
no format placeholders); and the checker itself catches each bad pattern.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "api"
QUERIES = sorted((ROOT / "schema" / "queries").glob("api_*.sql"))

SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s|DROP\s|ALTER\s|REFRESH\s+MATERIALIZED"
    r"|WHERE\s|FROM\s+\w+|VALUES\s*\(|TRUNCATE|PREPARE\s|EXECUTE\s|DEALLOCATE\s)\b",
    re.IGNORECASE,
)


def _const_text(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
    return ""


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Places where SQL text is assembled from non-literal parts."""
    tree = ast.parse(source, filename)
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        # f"SELECT ... {x}"
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            if SQL_WORDS.search(_const_text(node)):
                found.append(f"{where}: f-string SQL")
        # "SELECT ... {}".format(x) / "... %s" % x / "SELECT " + x
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            if SQL_WORDS.search(_const_text(node.func.value)):
                found.append(f"{where}: .format() SQL")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
            for side in (node.left, node.right):
                if SQL_WORDS.search(_const_text(side)):
                    found.append(f"{where}: {'%' if isinstance(node.op, ast.Mod) else '+'} on SQL text")
        # text(...) / sa.text(...) / sqlalchemy.text(...) with anything but one plain literal
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "text" and node.args:
                arg = node.args[0]
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    found.append(f"{where}: text() with a non-literal argument")
            # execute("..." built) on a raw cursor
            if name in {"execute", "exec_driver_sql"} and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.JoinedStr | ast.BinOp) or (
                        isinstance(arg, ast.Call) and getattr(arg.func, "attr", "") == "format"):
                    found.append(f"{where}: {name}() with built SQL")
    return found


def api_sources() -> list[Path]:
    return sorted(p for p in API.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", api_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sql_built_from_input_in_api(path):
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("path", QUERIES, ids=lambda p: p.name)
def test_named_queries_use_only_bound_params(path):
    sql = path.read_text()
    assert "%s" not in sql and "%(" not in sql, "psycopg2 placeholders belong to no named query"
    assert not re.search(r"\{\w*\}", sql), "format placeholders in SQL"
    assert re.search(r"--\s*name:\s*\w+", sql)


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
])
def test_the_checker_catches_each_pattern(bad):
    assert violations(bad)


@pytest.mark.parametrize("good", [
    'conn.execute(sa.text("SELECT 1 FROM t WHERE id = :id"), {"id": x})',
    'msg = f"project {pid} not found"',
    'log.warning("could not send %s: %s", name, exc)',
    'q = pgsql.SQL("PREPARE {} AS {}").format(pgsql.Identifier(name), body)',
])
def test_the_checker_lets_plain_code_pass(good):
    assert violations(good) == []
