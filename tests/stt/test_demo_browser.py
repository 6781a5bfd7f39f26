"""The browser demo (/demo/) end to end: a real server process, headless Debian Chromium
driven by Selenium, its fake microphone playing the JFK recording. The page captures it
through its AudioWorklet, resamples it to 16 kHz and streams it; the finals, the VAD
indicator and the latency figures appear, and nothing is fetched from outside the
service. With AUTH_REQUIRED the page is for signed-in staff and connects with a token."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile
from faster_whisper.audio import decode_audio

from tests import servers
from tests.conftest import JFK_PATH
from tests.servers import ROOT, ScratchDatabase, Server, base_env, headless_chromium

pytestmark = pytest.mark.realtime

# Copies of the first test's screenshots, to look at: while streaming, and after Stop.
SCREENSHOT_COPIES = {"live": "/tmp/fasttalk-demo.png", "ended": "/tmp/fasttalk-demo-ended.png"}
PASSWORD = "demo-pass-phrase-42"
MAKE_STAFF = """
from django.contrib.auth import get_user_model
get_user_model().objects.create_user("operator", "operator@example.com", "{password}", is_staff=True)
"""


@pytest.fixture
def speech_wav(tmp_path):
    """The JFK recording as a 16-bit 48 kHz mono WAV for Chromium's fake microphone,
    after 1.5 s of silence (the page connects while the file starts playing; it loops)."""
    if not JFK_PATH.is_file():
        pytest.fail(f"test speech missing: {JFK_PATH}")
    rate = 48000
    audio = np.concatenate([np.zeros(int(1.5 * rate), dtype=np.float32), decode_audio(str(JFK_PATH), rate)])
    path = tmp_path / "jfk-48k.wav"
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


@pytest.fixture
def server_env(tmp_path):
    """A server environment with a database of its own: a scratch PostgreSQL database
    when DATABASE_URL names one (bin/test), else SQLite in the test's folder."""
    database = None
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        database = ScratchDatabase(url)
        url = database.url()
    else:
        url = f"sqlite:///{tmp_path / 'server.sqlite3'}"
    yield {**base_env(), "DATABASE_URL": url, "STORE_AUDIO": "0", "STT_PRELOAD_MODEL": "1"}
    if database is not None:
        database.drop()


def make_browser(wav):
    return headless_chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                             f"--use-file-for-fake-audio-capture={wav}", "--autoplay-policy=no-user-gesture-required",
                             window="1000,900", capture_logs=True)


@pytest.fixture
def browser(speech_wav):
    session = make_browser(speech_wav)
    yield session
    session.quit()


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def screenshot(browser, tmp_path, name: str, keep_copy: bool) -> None:
    path = tmp_path / f"demo-{name}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if keep_copy:
        shutil.copyfile(path, SCREENSHOT_COPIES[name])


def stream_and_check(browser, expected: list[str], tmp_path, keep_copy: bool = False) -> dict:
    """Click Start on the loaded demo page, wait for `expected` phrases in its finals,
    click Stop and see the session end; returns what the page showed."""
    from selenium.webdriver.common.by import By

    text_of = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731
    # Record whether the VAD indicator ever lights (it goes off again with each final).
    browser.execute_script(
        "const vad = document.getElementById('vad'); window.vadLit = false;"
        "new MutationObserver(() => { if (vad.classList.contains('on')) window.vadLit = true; })"
        ".observe(vad, {attributes: true});")
    started = time.monotonic()
    browser.find_element(By.ID, "start").click()

    def heard():
        errors = text_of("errors")
        assert not errors, f"the page shows errors: {errors}"
        finals = words(text_of("finals"))
        return finals if all(phrase in finals for phrase in expected) else None

    finals = wait_for(heard, 40, f"finals with {expected}")
    heard_after = time.monotonic() - started
    assert browser.execute_script("return window.vadLit"), "the VAD indicator lit"
    final_latency, partial_latency = text_of("latency-final"), text_of("latency-partial")
    assert re.search(r"^\d+ ms · server \d+ ms$", final_latency), final_latency
    assert re.search(r"^\d+ ms · server \d+ ms$", partial_latency), partial_latency

    # A live view for the screenshot: the next utterance under way (best effort).
    try:
        wait_for(lambda: text_of("partial") and "on" in browser.find_element(By.ID, "vad").get_attribute("class"),
                 8, "a partial")
    except AssertionError:
        pass
    screenshot(browser, tmp_path, "live", keep_copy)

    browser.find_element(By.ID, "stop").click()
    status = wait_for(lambda: "Session ended" in text_of("status") and text_of("status"), 20, "session_ended")
    assert browser.find_element(By.ID, "start").is_enabled() and not browser.find_element(By.ID, "stop").is_enabled()
    assert not text_of("errors")

    # Nothing left the origin: resource timing (scripts, styles, the worklet, fetches)
    # and Chrome's network log (which also sees the WebSocket).
    origin = browser.execute_script("return location.origin")
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(u => !u.startsWith(location.origin))") == []
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.webSocketCreated":
            urls.append(message["params"]["url"])
    ws_origin = origin.replace("http", "ws", 1)
    assert f"{ws_origin}/ws/transcribe" in urls
    assert [u for u in urls if not (u.startswith(origin) or u.startswith(ws_origin))] == []

    # The demo's own console (/favicon.ico is not its business).
    problems = [entry["message"] for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" and entry["message"].startswith((f"{origin}/demo/", f"{origin}/static/"))]
    assert problems == [], "no script errors or CSP violations on the demo page"
    screenshot(browser, tmp_path, "ended", keep_copy)
    return {"finals": finals, "status": status, "final_latency": final_latency, "heard_after": heard_after}


def test_the_demo_transcribes_the_microphone_in_a_browser(browser, server_env, tmp_path):
    server = Server({**server_env, "AUTH_REQUIRED": "0"}, tmp_path)
    try:
        browser.get(f"{server.base}/")  # the service's page links the demo
        from selenium.webdriver.common.by import By

        browser.find_element(By.LINK_TEXT, "/demo/").click()
        wait_for(lambda: browser.find_elements(By.ID, "start"), 10, "the demo page")
        with urllib.request.urlopen(f"{server.base}/demo/", timeout=10) as response:
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"{server.base}/static/stt/demo/worklet.js", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/javascript")

        shown = stream_and_check(browser, ["fellow americans", "what your country can do for you"], tmp_path,
                                 keep_copy=True)
        assert "Session ended" in shown["status"]
    finally:
        server.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_with_auth_required_the_demo_is_for_staff_and_streams_with_a_token(browser, server_env, tmp_path,
                                                                          monkeypatch):
    from selenium.webdriver.common.by import By

    # The origin check admits exactly the page's own origin: pick the server's port first.
    port = servers.free_port()
    ports = iter([port, servers.free_port()])
    monkeypatch.setattr(servers, "free_port", lambda: next(ports))
    env = {**server_env, "AUTH_REQUIRED": "1", "ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
    server = Server(env, tmp_path)
    try:
        subprocess.run([sys.executable, "manage.py", "shell", "-c", MAKE_STAFF.format(password=PASSWORD)],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.build_opener(NoRedirect).open(f"{server.base}/demo/", timeout=10)
        assert refused.value.code == 302
        assert refused.value.headers["Location"] == "/admin/login/?next=/demo/"
        request = urllib.request.Request(f"{server.base}/demo/token", method="POST")
        with pytest.raises(urllib.error.HTTPError) as no_token:
            urllib.request.urlopen(request, timeout=10)
        assert no_token.value.code == 403  # no CSRF token, no session: nothing minted

        browser.get(f"{server.base}/demo/")
        wait_for(lambda: "/admin/login/" in browser.current_url, 10, "the admin login")
        browser.find_element(By.NAME, "username").send_keys("operator")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait_for(lambda: browser.find_elements(By.ID, "start"), 15, "the demo page after login")
        assert browser.current_url == f"{server.base}/demo/"
        assert "operator" in browser.find_element(By.CSS_SELECTOR, ".who").text
        assert "ftk_" not in browser.page_source, "no API key in the page"
        assert not browser.find_elements(By.CSS_SELECTOR, ".warning"), "the page's origin is allowed"

        stream_and_check(browser, ["fellow americans"], tmp_path)
        log = server.log.read_text()
        assert "fasttalk.auth." not in log, "the token is never logged"
    finally:
        server.stop()
