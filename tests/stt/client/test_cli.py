"""`python -m stt.client` as a user runs it, against a real server process."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from stt.client.cli import DIM, RESET, TerminalDisplay, partial_line
from stt.evaluation import word_error_rate
from tests.conftest import JFK_PATH, JFK_TEXT
from tests.servers import ROOT


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stt.client", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def mp3_speech(tmp_path_factory) -> Path:
    """The JFK recording re-encoded as MP3 (44.1 kHz stereo): 'any common audio format'."""
    import av

    target = tmp_path_factory.mktemp("mp3") / "jfk.mp3"
    with av.open(str(JFK_PATH)) as source, av.open(str(target), "w") as out:
        stream = out.add_stream("libmp3lame", rate=44100)
        stream.layout = "stereo"
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return target


@pytest.mark.realtime
def test_stream_prints_each_final_on_its_own_line(stt_server, mp3_speech):
    done = run_cli("stream", str(mp3_speech), "--url", stt_server.ws, "--pace", "3",
                   env={"FASTTALK_API_KEY": stt_server.keys["backend"]})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) >= 2 and all(line.strip() for line in lines)
    assert "\r" not in done.stdout, "no in-place updates when stdout is not a terminal"
    assert word_error_rate(JFK_TEXT, " ".join(lines)) <= 0.1


@pytest.mark.realtime
def test_json_output_is_one_schema_valid_server_message_per_line(stt_server):
    done = run_cli("stream", str(JFK_PATH), "--url", stt_server.ws, "--fast", "--json",
                   "--api-key", stt_server.keys["backend"], "--language", "en")
    assert done.returncode == 0, done.stderr
    schema = json.loads((ROOT / "docs" / "protocol.schema.json").read_text())
    check = jsonschema.Draft202012Validator({**schema, "oneOf": [{"$ref": "#/$defs/ServerMessage"}]})
    received = [json.loads(line) for line in done.stdout.splitlines()]
    for message in received:
        check.validate(message)
    assert received[0]["type"] == "session_started" and received[-1]["type"] == "session_ended"
    assert received[0]["data"]["config"]["language"] == "en"
    finals = " ".join(m["data"]["text"] for m in received if m["type"] == "transcription_final")
    assert word_error_rate(JFK_TEXT, finals) <= 0.1


@pytest.mark.realtime
def test_keyterms_and_a_prompt_given_on_the_command_line_configure_the_session(stt_server):
    done = run_cli("stream", str(JFK_PATH), "--url", stt_server.ws, "--fast", "--json", "--no-partials",
                   "--api-key", stt_server.keys["backend"], "--keyterm", "Kennedy", "--keyterm", "Fellow Americans",
                   "--prompt", "A speech at an inauguration.")
    assert done.returncode == 0, done.stderr
    received = [json.loads(line) for line in done.stdout.splitlines()]
    config = received[0]["data"]["config"]
    assert config["keyterms"] == ["Kennedy", "Fellow Americans"]
    assert config["prompt"] == "A speech at an inauguration."
    finals = [m for m in received if m["type"] == "transcription_final"]
    assert finals and not any(m["type"] == "transcription_partial" for m in received)


def test_a_prompt_over_the_limit_is_refused_before_connecting():
    done = run_cli("stream", str(JFK_PATH), "--url", "ws://127.0.0.1:9/ws/transcribe", "--prompt", "x" * 2001)
    assert done.returncode != 0 and "prompt" in done.stderr, done.stderr


@pytest.mark.realtime
def test_on_a_terminal_partials_and_a_progress_bar_update_in_place(stt_server):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        # Real time (the default pace), as a microphone: partials keep up with speech.
        [sys.executable, "-m", "stt.client", "stream", str(JFK_PATH), "--url", stt_server.ws],
        cwd=ROOT, stdout=follower, stderr=subprocess.PIPE,
        env={**os.environ, "FASTTALK_API_KEY": stt_server.keys["backend"], "COLUMNS": "200"})
    os.close(follower)
    shown = b""
    deadline = time.time() + 90
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    process.wait(30)
    os.close(leader)
    text = shown.decode()
    assert process.returncode == 0, process.stderr.read()
    assert "\r\x1b[K" in text, "the status line is rewritten in place"
    assert "[####################]  11.0/11.0s" in text, "the progress bar reaches the end"
    redraws = [part.split("s ", 1)[-1] for part in text.split("\r\x1b[K") if "/11.0s" in part]
    assert any(part.strip() for part in redraws), "partials appear on the status line"
    assert any(DIM in part and part.endswith(RESET) for part in redraws), "their unstable words are dimmed"
    finals = [line.strip() for line in text.replace("\r\x1b[K", "\n").splitlines()
              if line.strip() and "/11.0s" not in line]
    assert word_error_rate(JFK_TEXT, " ".join(finals)) <= 0.15


@pytest.mark.realtime
def test_an_unreadable_file_is_a_usage_error(stt_server, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not audio")
    done = run_cli("stream", str(junk), "--url", stt_server.ws)
    assert done.returncode == 2 and "cannot decode audio" in done.stderr
    assert run_cli("stream", "--url", stt_server.ws).returncode == 2  # neither a file nor --mic


@pytest.mark.realtime
def test_a_missing_key_says_how_to_give_one(stt_server):
    done = run_cli("stream", str(JFK_PATH), "--url", stt_server.ws, env={"FASTTALK_API_KEY": ""})
    assert done.returncode == 1 and "HTTP 403" in done.stderr and "FASTTALK_API_KEY" in done.stderr


@pytest.mark.realtime
def test_perf_reports_latencies_and_message_counts_for_concurrent_clients(stt_server):
    done = run_cli("perf", str(JFK_PATH), "--url", stt_server.ws, "--api-key", stt_server.keys["backend"],
                   "--clients", "2", "--duration", "12", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["clients"] == 2 and results["sessions_failed"] == 0
    assert results["final_count"] >= 2 * 3 and results["partial_count"] > 0
    assert 0 < results["avg_partial_latency_ms"] < 3000
    assert 0 < results["avg_final_latency_ms"] < 5000
    assert results["total_messages"] == sum(results["messages_by_type"].values())
    assert results["messages_by_type"]["session_started"] == 2


class FakeMicrophone:
    """ALSA's default capture device reading a FIFO that a thread fills at real-time pace:
    PortAudio (through sounddevice) records JFK's speech, then silence, as from a microphone.
    PortAudio opens the device more than once while probing; each early close of the FIFO
    restarts the speech from its beginning."""

    def __init__(self, folder: Path, speech) -> None:
        import threading

        import numpy as np

        alsa_conf = Path("/usr/share/alsa/alsa.conf")
        if not alsa_conf.is_file():
            pytest.fail("ALSA's configuration is missing (bin/test installs libportaudio2 with apt-get)")
        self.fifo = folder / "microphone.fifo"
        os.mkfifo(self.fifo)
        (folder / "asoundrc").write_text(
            'pcm.!default { type file; slave.pcm "null"; file "/dev/null"; '
            f'infile "{self.fifo}"; format "raw" }}\npcm.null {{ type null }}\n')
        self.env = {"ALSA_CONFIG_PATH": f"{alsa_conf}:{folder / 'asoundrc'}"}
        self.speech = np.asarray(speech, dtype="<f4").tobytes()
        self.spoken = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        block = 1024 * 4  # 64 ms of float32 samples
        silence = bytes(block)
        while not self.stopped.is_set():
            try:
                with open(self.fifo, "wb", buffering=0) as pipe:
                    began = time.monotonic()
                    sent = 0
                    while not self.stopped.is_set():
                        chunk = self.speech[sent:sent + block] or silence
                        pipe.write(chunk)
                        sent += len(chunk)
                        if sent >= len(self.speech) + 16000 * 4 * 2:
                            self.spoken.set()  # the speech and 2 s of silence are out
                        time.sleep(max(0.0, began + sent / (16000 * 4) - time.monotonic()))
            except BrokenPipeError:
                continue

    def stop(self) -> None:
        self.stopped.set()
        try:  # unblock a writer waiting for a reader
            os.close(os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.thread.join(5)


@pytest.mark.realtime
def test_the_microphone_streams_until_ctrl_c_and_the_last_words_still_arrive(stt_server, tmp_path, jfk_audio):
    import signal

    microphone = FakeMicrophone(tmp_path, jfk_audio)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "stt.client", "stream", "--mic", "--json", "--url", stt_server.ws],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **microphone.env, "FASTTALK_API_KEY": stt_server.keys["backend"]})
        assert microphone.spoken.wait(60), "the microphone was never read"
        process.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = process.communicate(timeout=60)
    finally:
        microphone.stop()
    assert process.returncode == 0, err
    received = [json.loads(line) for line in out.splitlines()]
    assert [m for m in received if m["type"] == "error"] == []
    assert received[-1]["type"] == "session_ended" and received[-1]["data"]["reason"] == "end_session"
    heard = received[-1]["data"]["audio_received_s"]
    assert 11 <= heard <= 40, f"real-time capture, not a flood: {heard} s of audio"
    finals = " ".join(m["data"]["text"] for m in received if m["type"] == "transcription_final")
    assert word_error_rate(JFK_TEXT, finals) <= 0.15, finals


class Terminal(io.StringIO):
    """What the display writes to, standing for a terminal."""

    def isatty(self) -> bool:
        return True


class TestPartialDisplay:
    def test_the_stable_words_are_plain_and_the_unstable_ones_dimmed(self):
        assert partial_line("And so my", "fellow", 80, dim=True) == f"And so my {DIM}fellow{RESET}"
        assert partial_line("And so my", "", 80, dim=True) == "And so my"
        assert partial_line("", "And so", 80, dim=True) == f"{DIM}And so{RESET}"

    def test_without_dimming_the_partial_is_plain_text(self):
        assert partial_line("And so my", "fellow", 80, dim=False) == "And so my fellow"

    def test_a_partial_wider_than_the_room_shows_its_end_counted_in_visible_characters(self):
        assert partial_line("And so my", "fellow", 10, dim=True) == f" my {DIM}fellow{RESET}"
        assert partial_line("And so my", "fellow", 3, dim=True) == f"{DIM}low{RESET}"
        assert partial_line("And so my", "fellow", 0, dim=True) == ""

    def test_on_a_terminal_the_status_line_shows_the_partial_with_its_unstable_words_dimmed(self, monkeypatch):
        monkeypatch.setenv("COLUMNS", "80")
        monkeypatch.delenv("NO_COLOR", raising=False)
        terminal = Terminal()
        display = TerminalDisplay(terminal, total_seconds=None)
        display.show_partial("And so my", "fellow")
        assert terminal.getvalue().endswith(f"\r\x1b[KAnd so my {DIM}fellow{RESET}")

    def test_no_color_asks_for_plain_text_and_without_a_terminal_partials_are_not_shown(self, monkeypatch):
        monkeypatch.setenv("COLUMNS", "80")
        monkeypatch.setenv("NO_COLOR", "1")
        terminal = Terminal()
        TerminalDisplay(terminal, total_seconds=None).show_partial("And so my", "fellow")
        assert terminal.getvalue().endswith("\r\x1b[KAnd so my fellow")
        pipe = io.StringIO()
        display = TerminalDisplay(pipe, total_seconds=None)
        display.show_partial("And so my", "fellow")
        display.show_final("And so my fellow Americans")
        assert pipe.getvalue() == "And so my fellow Americans\n"
