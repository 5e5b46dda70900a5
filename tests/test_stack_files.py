"""compose.yaml, make up and the process files describe the same stack."""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.processes import processes, setup_commands
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


def test_compose_migrate_service_runs_make_ups_setup_steps() -> None:
    command = _compose()["services"]["migrate"]["command"]
    assert command[:2] == ["sh", "-c"]
    assert command[2] == " && ".join(" ".join(step) for step in setup_commands())


# --- production process files (deploy/systemd, deploy/supervisor) ------------

DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / "discovery.env.example"
INSTALL_DIR = "/opt/discovery"  # where the files expect the checkout (with its .venv)
ENV_FILE = "/etc/discovery/discovery.env"


def _env_file(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))


def _production_processes() -> list:
    """What `make up` would run with the production environment file's settings."""
    return processes(Settings.from_env(_env_file(ENV_EXAMPLE)))


def _expected_argv(proc) -> list[str]:
    return [f"{INSTALL_DIR}/.venv/bin/{proc.argv[0]}", *proc.argv[1:]]


def _without_schedule(argv: list[str]) -> list[str]:
    """Beat's schedule file differs by design (.run/ locally, /var/lib/discovery in production)."""
    out = list(argv)
    if "-s" in out:
        i = out.index("-s")
        del out[i:i + 2]
    return out


def _systemd_exec_start(unit: Path) -> list[str]:
    parser = configparser.RawConfigParser(strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(unit)
    raw = parser["Service"]["ExecStart"].replace("%%", "%")  # systemd's specifier escape
    env = _env_file(ENV_EXAMPLE)
    # systemd expands ${VAR} from EnvironmentFile; every one used must be set there.
    for name in re.findall(r"\$\{(\w+)\}", raw):
        assert env.get(name), f"{unit.name} uses ${{{name}}}, which {ENV_EXAMPLE.name} does not set"
    return shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], raw))


def test_there_is_one_systemd_unit_and_one_supervisor_program_per_process() -> None:
    names = {p.name for p in _production_processes()}
    assert {u.name for u in (DEPLOY / "systemd").glob("discovery-*.service")} == {f"discovery-{n}.service" for n in names}
    assert {c.name for c in (DEPLOY / "supervisor").glob("discovery-*.conf")} == {f"discovery-{n}.conf" for n in names}
    group = configparser.RawConfigParser()
    group.read(DEPLOY / "supervisor" / "discovery.conf")
    assert set(group["group:discovery"]["programs"].split(",")) == {f"discovery-{n}" for n in names}


def test_systemd_units_run_the_commands_make_up_runs() -> None:
    for proc in _production_processes():
        unit = DEPLOY / "systemd" / f"discovery-{proc.name}.service"
        text = unit.read_text()
        assert f"WorkingDirectory={INSTALL_DIR}\n" in text and f"EnvironmentFile={ENV_FILE}\n" in text, unit.name
        assert _without_schedule(_systemd_exec_start(unit)) == _without_schedule(_expected_argv(proc)), unit.name


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own checker on copies pointing at this checkout (it requires the programs to exist)."""
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in (DEPLOY / "systemd").iterdir():
        text = unit.read_text().replace(INSTALL_DIR, str(ROOT)).replace(ENV_FILE, str(ENV_EXAMPLE))
        (tmp_path / unit.name).write_text(text)
    proc = subprocess.run([verify, "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_supervisor_programs_run_the_commands_make_up_runs(tmp_path: Path) -> None:
    """Parsed by supervisor itself; each program's shell line, run by sh with the example environment
    file, execs exactly the argv `make up` runs."""
    from supervisor.options import ServerOptions

    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    user = pwd.getpwuid(os.getuid()).pw_name
    for conf in (DEPLOY / "supervisor").glob("*.conf"):
        # supervisor checks that the user exists and that log directories exist.
        text = conf.read_text().replace("user=discovery\n", f"user={user}\n").replace("/var/log/discovery", str(tmp_path))
        (conf_dir / conf.name).write_text(text)
    main = tmp_path / "supervisord.conf"
    main.write_text(f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
                    f"[include]\nfiles = {conf_dir}/*.conf\n")
    options = ServerOptions()
    options.realize(args=["-c", str(main)])
    programs = {p.name: p for g in options.process_group_configs for p in g.process_configs}
    assert {g.name for g in options.process_group_configs} == {"discovery"}

    for proc in _production_processes():
        program = programs[f"discovery-{proc.name}"]
        assert program.directory == INSTALL_DIR and program.killasgroup, program.name
        shell, dash_c, script = shlex.split(program.command)
        assert (shell, dash_c) == ("/bin/sh", "-c") and ENV_FILE in script
        # Run the line as supervisor would, with the example environment file, printing the argv exec gets.
        probe = script.replace(ENV_FILE, str(ENV_EXAMPLE)).replace("exec ", "exec printf '%s\\n' ", 1)
        out = subprocess.run(["/bin/sh", "-c", probe], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                             text=True, timeout=30, check=True).stdout
        assert _without_schedule(out.splitlines()) == _without_schedule(_expected_argv(proc)), program.name


def test_production_env_example_sets_only_documented_settings() -> None:
    documented = set(_env_file(ROOT / ".env.example"))
    example = _env_file(ENV_EXAMPLE)
    assert set(example) <= documented, set(example) - documented
    assert {"DATABASE_URL", "REDIS_URL", "JWT_SECRET", "FLOWER_HOST", "FLOWER_PORT"} <= set(example)
    assert example["APP_ENV"] == "production"
    Settings.from_env(example)  # valid as shipped (a production JWT_SECRET placeholder of the right length)


def test_beat_is_documented_as_exactly_one() -> None:
    for path in (DEPLOY / "systemd" / "discovery-beat.service", DEPLOY / "supervisor" / "discovery-beat.conf",
                 ROOT / "README.md"):
        text = path.read_text()
        assert "exactly one" in text.lower() and "#2856" in text, path.name
