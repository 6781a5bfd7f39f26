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


def test_compose_runs_web_worker_beat_postgres_and_redis_with_health_checks_and_volumes():
    services = compose()["services"]
    assert set(services) == {"web", "worker", "beat", "postgres", "redis"}
    for name in ("web", "worker", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "/health" in " ".join(services["web"]["healthcheck"]["test"])
    assert {"8000:8000", "9091:9091"} <= set(services["web"]["ports"])
    declared = set(compose()["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in declared, volume
    for required in ("postgres-data:/var/lib/postgresql/data", "media:/app/var/media"):
        assert any(v == required for s in services.values() for v in s.get("volumes", [])), required
    # Workers start after the web service is healthy: migrations have run by then.
    assert services["worker"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_environment_variable_in_compose_is_a_setting_of_the_service():
    document = compose()
    gpu = compose("docker-compose.gpu.yml")
    names = set(document["x-fasttalk-env"])
    for service in [*document["services"].values(), *gpu["services"].values()]:
        names |= set(service.get("environment", {}))
    unknown = names - SETTINGS_NAMES - IMAGE_VARIABLES
    assert not unknown, f"compose sets variables the settings do not read: {unknown}"


def test_the_gpu_override_reserves_a_gpu_and_builds_with_the_gpu_requirements():
    web = compose("docker-compose.gpu.yml")["services"]["web"]
    assert web["build"]["args"]["REQUIREMENTS"] == "gpu"
    assert web["environment"]["STT_DEVICE"] == "cuda"
    devices = web["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'requirements/${REQUIREMENTS}.txt' in dockerfile and "ARG REQUIREMENTS=base" in dockerfile


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
