"""A runtime profile saved in the admin of one running server process reaches new
sessions of every server process within 2 s, without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time

import pytest
import websockets

from tests.servers import AdminBrowser, ScratchDatabase, Server, base_env

pytestmark = pytest.mark.realtime


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two server processes on one PostgreSQL database and one Redis. The second
    re-reads profiles only every 60 s: it can learn of a change in time only from the
    announcement over the channel layer."""
    database = ScratchDatabase(os.environ["DATABASE_URL"])
    folder = tmp_path_factory.mktemp("live-config")
    env = {**base_env(), "DATABASE_URL": database.url()}
    first = Server(env, folder)
    second = Server({**env, "RUNTIME_CONFIG_REFRESH_SECONDS": "60"}, folder)
    first.manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com",
                 env={"DJANGO_SUPERUSER_PASSWORD": "s3cret-pass-phrase"})
    yield first, second
    first.stop()
    second.stop()
    database.drop()


async def runtime_of_new_session(server: Server) -> tuple[dict, dict]:
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"type": "start_session"}))
        started = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "end_session"}))
        async for _ in ws:
            pass
    return started["data"]["runtime"], started["data"]["config"]


async def seconds_until(server: Server, expected_vad: float, limit: float = 5.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        runtime, _ = await runtime_of_new_session(server)
        if runtime["vad_threshold"] == expected_vad:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"the change did not reach the process within {limit} s")


async def test_a_profile_saved_in_the_admin_reaches_every_process_within_two_seconds(two_processes):
    first, second = two_processes
    for server in (first, second):
        runtime, config = await runtime_of_new_session(server)
        assert runtime["profile"] == "" and runtime["vad_threshold"] == 0.5
        assert runtime["endpointing_eagerness"] == config["endpointing"] == "medium"

    browser = AdminBrowser(first.base, "admin", "s3cret-pass-phrase")
    form = browser.get("/admin/stt/runtimeprofile/add/")
    status, _ = browser.post("/admin/stt/runtimeprofile/add/", {
        "name": "call-center", "description": "noisy room", "is_default": "on", "vad_threshold": "0.65",
        "partial_chunk_duration": "0.4", "final_beam_size": "3", "default_language": "",
        "endpointing_eagerness": "high",
    }, form)
    assert status == 200  # redirected to the list after the save

    for server in (first, second):
        assert await seconds_until(server, 0.65) <= 2.0
        runtime, config = await runtime_of_new_session(server)
        assert (runtime["profile"], runtime["final_beam_size"]) == ("call-center", 3)
        assert config["partial_chunk_duration"] == 0.4, "the profile's default for the session key"
        assert runtime["endpointing_eagerness"] == config["endpointing"] == "high"

    # An edit travels the same way.
    page = browser.get("/admin/stt/runtimeprofile/")
    change_path = re.search(r"/admin/stt/runtimeprofile/\d+/change/", page).group(0)
    form = browser.get(change_path)
    browser.post(change_path, {
        "name": "call-center", "description": "noisy room", "is_default": "on", "vad_threshold": "0.7",
        "partial_chunk_duration": "0.4", "final_beam_size": "3", "default_language": "",
    }, form)
    assert await seconds_until(second, 0.7) <= 2.0


async def test_the_admin_of_a_running_server_refuses_invalid_values(two_processes):
    first, _ = two_processes
    browser = AdminBrowser(first.base, "admin", "s3cret-pass-phrase")
    form = browser.get("/admin/stt/runtimeprofile/add/")
    status, page = browser.post("/admin/stt/runtimeprofile/add/", {
        "name": "broken", "vad_threshold": "3", "final_chunk_duration": "5", "max_silence_duration": "1",
        "default_language": "",
    }, form)
    assert status == 200 and "Please correct the errors below" in page
    assert "Ensure this value is less than or equal to 0.95" in page
