"""compose.yaml, make up and the process files describe the same stack."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from deploy.processes import processes
from schema.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _settings() -> Settings:
    return Settings.from_env({"DATABASE_URL": "postgresql://x@h/db", "REDIS_URL": "redis://h:6379/0"})


def _normalize(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Drop the parts that differ by design: listen addresses and the Beat schedule file."""
    out = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "-s":  # beat schedule file: .run/ locally, /tmp in a container
            skip = True
            continue
        if re.match(r"--(address|port)=", arg):
            continue
        out.append(arg)
    return out


def test_compose_runs_the_same_services_as_make_up() -> None:
    services = _compose()["services"]
    procs = processes(_settings())
    assert {"postgres", "redis"} <= services.keys()
    for proc in procs:
        assert proc.name in services, f"compose.yaml lacks {proc.name}"
        assert _normalize(services[proc.name]["command"]) == _normalize(proc.argv), proc.name
    app_services = set(services) - {"postgres", "redis", "migrate"}
    assert app_services == {p.name for p in procs}


def test_compose_sets_every_documented_setting_the_app_reads() -> None:
    env = _compose()["x-app-env"]
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    required = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND",
                "MV_REFRESH_WORKER_ENABLED", "RECONCILIATION_JOB_ENABLED", "JWT_SECRET", "API_PORT", "FLOWER_PORT"}
    assert required <= set(env), required - set(env)
    assert set(env) <= documented, f"compose sets undocumented settings: {set(env) - documented}"


def test_compose_flower_is_not_exposed_without_auth() -> None:
    env = _compose()["x-app-env"]
    if env["FLOWER_HOST"] not in {"127.0.0.1", "localhost"}:
        assert env.get("FLOWER_BASIC_AUTH"), "Flower bound beyond localhost must have FLOWER_BASIC_AUTH"


def test_every_setting_in_env_example_is_read_by_settings() -> None:
    source = (ROOT / "schema" / "settings.py").read_text() + (ROOT / "deploy" / "stack.py").read_text()
    for line in (ROOT / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name = line.split("=", 1)[0]
            assert f'"{name}"' in source, f"{name} is documented but nothing reads it"
