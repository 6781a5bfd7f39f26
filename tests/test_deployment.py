"""The deployment files agree with the code: compose services, health checks and volumes
as the README describes them, environment names the settings know, requirement sets
split by purpose and pinned.

No Docker daemon runs here (nor in CI), so the images are not built by the tests; these
checks catch the drift that breaks a deployment silently (a renamed setting, a missing
volume or health check, an unpinned package)."""

from __future__ import annotations

import re

import yaml

from tests.servers import ROOT

SETTINGS_NAMES = set(re.findall(r'env_(?:str|bool|int|float|list)\("([A-Z_]+)"',
                                (ROOT / "fasttalk" / "settings.py").read_text()))
# Variables of the postgres image, not of the service.
IMAGE_VARIABLES = {"POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


WEB_SERVICES = ("web1", "web2", "web3")


def test_compose_runs_haproxy_three_web_processes_worker_beat_postgres_and_redis():
    services = compose()["services"]
    assert set(services) == {"haproxy", "migrate", *WEB_SERVICES, "worker", "beat", "postgres", "redis"}
    for name in (*WEB_SERVICES, "worker", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    for name in WEB_SERVICES:
        web = services[name]
        # Liveness read from /health's report (a full or draining process answers 503
        # and is alive): the module the image holds, on the process's own port.
        assert web["healthcheck"]["test"] == ["CMD", "python", "-m", "monitoring.alive",
                                              f"http://127.0.0.1:{web['environment']['WEBSOCKET_PORT']}/health"]
        # One thread per inference, two at a time (docs/capacity.md), not all cores each.
        assert (web["environment"]["STT_INFERENCE_WORKERS"], web["environment"]["STT_CPU_THREADS"]) == ("2", "1")
        assert web["command"] == ["python", "manage.py", "serve"]
        assert web["environment"]["WEBSOCKET_PORT"] == "8000" and "8000" in web["expose"]
        assert not any(port.endswith(":8000") for port in web.get("ports", [])), "sessions go through HAProxy"
        assert any(port.endswith(":9091") for port in web["ports"]), "each process's monitoring port"
        # Migrations run once, before any process serves (three at once would race).
        assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert web["stop_grace_period"] == "30s"
    assert "8000:8000" in services["haproxy"]["ports"]
    declared = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in declared, volume
    for required in ("postgres-data:/var/lib/postgresql/data", "media:/app/var/media"):
        assert any(v == required for s in services.values() for v in s.get("volumes", [])), required
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def haproxy_variables() -> set[str]:
    """The environment variables deploy/haproxy.cfg reads (outside its comments)."""
    lines = (line.split("#", 1)[0] for line in (ROOT / "deploy" / "haproxy.cfg").read_text().splitlines())
    return set(re.findall(r"\$\{([A-Z0-9_]+)-", "\n".join(lines)))


def test_the_balancer_runs_the_tested_config_from_deploy_with_every_process_as_a_server():
    """docker-compose.yml's HAProxy reads deploy/haproxy.cfg, the file tests/test_topology.py
    runs real processes behind; its environment fills exactly the variables the file
    reads, and each web service is one of its servers."""
    haproxy = compose()["services"]["haproxy"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert set(haproxy["environment"]) == haproxy_variables()
    servers = {value for name, value in haproxy["environment"].items() if re.fullmatch(r"FASTTALK_WEB\d+", name)}
    assert servers == {f"{name}:8000" for name in WEB_SERVICES}
    assert haproxy["image"].startswith("haproxy:2.6"), "the major version the tests run (Debian bookworm's)"


def test_the_balancer_config_is_valid_for_haproxy_with_the_compose_environment(tmp_path):
    """`haproxy -c` (Debian's, requirements/apt.txt) accepts the file with compose's
    values; the web hosts do not resolve here, which the file allows (init-addr none)."""
    import os
    import shutil
    import subprocess

    binary = shutil.which("haproxy")
    assert binary, "haproxy is not installed (bin/test installs it with apt-get)"
    env = {**os.environ, **compose()["services"]["haproxy"]["environment"],
           "HAPROXY_STATS_SOCKET": str(tmp_path / "admin.sock")}
    checked = subprocess.run([binary, "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = (ROOT / "deploy" / "haproxy.cfg").read_text()
    for line in ("balance leastconn", "uri /ready", "timeout tunnel 1h", "option redispatch"):
        assert line in config, line


def test_every_environment_variable_in_compose_is_a_setting_of_the_service():
    document = compose()
    gpu = compose("docker-compose.gpu.yml")
    names = set(document["x-fasttalk-env"])
    services = [service for name, service in document["services"].items() if name != "haproxy"]
    for service in [*services, *gpu["services"].values()]:
        names |= set(service.get("environment", {}))
    unknown = names - SETTINGS_NAMES - IMAGE_VARIABLES
    assert not unknown, f"compose sets variables the settings do not read: {unknown}"


def test_the_gpu_override_reserves_a_gpu_for_each_process_and_builds_with_the_gpu_requirements():
    services = compose("docker-compose.gpu.yml")["services"]
    assert set(services) == set(WEB_SERVICES)
    for name, web in services.items():
        assert web["build"]["args"]["REQUIREMENTS"] == "gpu"
        assert web["environment"]["STT_DEVICE"] == "cuda"
        assert web["environment"]["STT_INFERENCE_WORKERS"] == "1", "a GPU's one queue batches"
        devices = web["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert devices[0]["device_ids"] == [f"${{{name.upper()}_GPU:-0}}"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'requirements/${REQUIREMENTS}.txt' in dockerfile and "ARG REQUIREMENTS=base" in dockerfile


def test_the_images_health_check_is_the_liveness_check_too():
    dockerfile = (ROOT / "Dockerfile").read_text()
    healthcheck = dockerfile.split("HEALTHCHECK", 1)[1].split("\n# ", 1)[0]
    assert 'CMD ["python", "-m", "monitoring.alive", "http://127.0.0.1:8000/health"]' in healthcheck
    assert (ROOT / "monitoring" / "alive.py").is_file()


def test_requirements_are_split_by_purpose_and_pinned():
    folder = ROOT / "requirements"
    sets = {path.stem: path.read_text().splitlines() for path in folder.glob("*.txt") if path.stem != "apt"}
    assert set(sets) == {"base", "dev", "gpu", "client"}
    for name, lines in sets.items():
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "-r ")):
                assert re.match(r"^[A-Za-z0-9_.\[\]-]+==[\w.]+$", line), f"{name}.txt: unpinned {line!r}"
    # The service installs the client too (`python -m stt.client` right after bin/serve).
    assert "-r client.txt" in sets["base"] and "-r base.txt" in sets["dev"] and "-r base.txt" in sets["gpu"]
    client = {line.split("==")[0].lower() for line in sets["client"] if "==" in line and not line.startswith("#")}
    assert not client & {"django", "channels", "faster-whisper", "torch"}, "a client installs no server"
    # The pinned versions a client and the server share agree.
    pins = {name: dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", "\n".join(lines), re.M))
            for name, lines in sets.items()}
    for package, version in pins["client"].items():
        if package in pins["base"]:
            assert pins["base"][package] == version, package
