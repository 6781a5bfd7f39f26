"""Stream real speech into a Fasttalk STT server at real-time pace and print latency and WER.

    .venv/bin/python bench/stream_latency.py                 # starts a local server itself
    .venv/bin/python bench/stream_latency.py --url ws://host:8000/ws/transcribe --streams 4

Every figure is measured by the client, against the moment it sent the audio concerned:
  partial latency      a partial's arrival - sending of the last sample it covers
  partial interval     time between consecutive partials of one utterance
  final latency        a final's arrival - sending of the utterance's last spoken word
                       (from its word timestamps), so it includes the silence wait
  word lag             a final's word first shown (in a partial, else the final) - sending
                       of the audio where the word ends (from the final's word timestamps)
  VAD latency          voice_activity_detected's arrival - sending of the speech onset, found
                       from the audio's energy (independent of the VAD under test)
WER compares the streamed finals with the reference transcripts; the same files are also
transcribed offline with the same model (plain WhisperModel.transcribe, beam 5) as a baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stt.evaluation import normalize_text, word_errors  # noqa: E402

AUDIO_DIR = ROOT.parent / "shared" / "audio"
SAMPLE_RATE = 16000
FRAME = 512  # 32 ms, the low end of the design document's 512-2048


@dataclass
class Recording:
    name: str
    audio: np.ndarray
    reference: str


@dataclass
class StreamResult:
    recording: str
    text: str = ""
    partial_latencies: list[float] = field(default_factory=list)
    partial_intervals: list[float] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    vad_latencies: list[float] = field(default_factory=list)
    word_lags: list[float] = field(default_factory=list)
    partials: int = 0
    finals: int = 0
    lag_behind_real_time: float = 0.0


def load_recordings(audio_dir: Path) -> list[Recording]:
    """The recordings listed with a reference text in the audio folder's README table."""
    from faster_whisper.audio import decode_audio

    readme = (audio_dir / "README.md").read_text()
    recordings = []
    for name, reference in re.findall(r"^\| `([^`]+)` \|[^|]*\| (.+?) \|\s*$", readme, re.M):
        path = audio_dir / name
        if path.is_file():
            recordings.append(Recording(name, decode_audio(str(path), SAMPLE_RATE), reference.strip()))
    if not recordings:
        raise SystemExit(f"no recordings with reference texts found in {audio_dir}")
    return recordings


async def stream_one(url: str, recording: Recording, config: dict, variant: int) -> StreamResult:
    result = StreamResult(recording.name)
    # Each stream gets its own tiny gain change: real audio never repeats byte for byte,
    # and the server's result cache must not make a repeated file look fast.
    gain = np.float32(1.0 - variant * 1e-4)
    audio = np.concatenate([recording.audio * gain, np.zeros(SAMPLE_RATE, np.float32)])
    finals: list[str] = []
    last_partial: dict[str, float] = {}
    partial_words: dict[str, list[tuple[float, list[str]]]] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": config}))
        assert json.loads(await ws.recv())["type"] == "session_started"
        t0 = time.perf_counter()

        def sent_at(ms: float) -> float:
            """When the frame holding the sample at `ms` of the session timeline was sent."""
            frame_index = int(ms * SAMPLE_RATE / 1000) // FRAME
            return t0 + frame_index * FRAME / SAMPLE_RATE

        async def reader() -> None:
            async for raw in ws:
                now = time.perf_counter()
                message = json.loads(raw)
                data = message.get("data", {})
                kind = message["type"]
                if kind == "transcription_partial":
                    result.partials += 1
                    covered_to = data["start_ms"] + data["audio_duration_ms"] - 1
                    result.partial_latencies.append(now - sent_at(covered_to))
                    partial_words.setdefault(data["utterance_id"], []).append((now, normalize_text(data["text"])))
                    previous = last_partial.get(data["utterance_id"])
                    if previous is not None:
                        result.partial_intervals.append(now - previous)
                    last_partial[data["utterance_id"]] = now
                elif kind == "transcription_final":
                    result.finals += 1
                    finals.append(data["text"])
                    words = data.get("timestamps") or []
                    if words:
                        speech_end = data["start_ms"] + words[-1]["end_ms"]
                        result.final_latencies.append(now - sent_at(speech_end))
                    shown = partial_words.get(data["utterance_id"], [])
                    for index, word in enumerate(words):
                        spoken = sent_at(data["start_ms"] + word["end_ms"])
                        result.word_lags.append(first_shown(normalize_text(word["word"]), index, shown, now) - spoken)
                elif kind == "voice_activity_detected":
                    onset = energy_onset_ms(recording.audio, data["audio_offset_ms"])
                    result.vad_latencies.append(now - sent_at(onset))

        reading = asyncio.create_task(reader())
        for index in range(0, audio.size, FRAME):
            await ws.send(audio[index:index + FRAME].astype("<f4").tobytes())
            due = t0 + (index + FRAME) / SAMPLE_RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.lag_behind_real_time = max(result.lag_behind_real_time, -delay)
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 120)
    result.text = " ".join(finals)
    return result


def first_shown(word: list[str], index: int, partials: list[tuple[float, list[str]]], final_at: float) -> float:
    """When a final's word first appeared: the first partial holding it near the same
    position (two words either way), else the final itself."""
    if not word:
        return final_at
    for arrived, words in partials:
        if word[0] in words[max(0, index - 2):index + 3]:
            return arrived
    return final_at


def energy_onset_ms(audio: np.ndarray, near_ms: float) -> float:
    """Where speech starts near `near_ms`: the first 10 ms frame whose level is within
    15 dB of the recording's loud frames, searched from 500 ms before `near_ms`."""
    frame = SAMPLE_RATE // 100
    levels = np.sqrt(np.mean(audio[: audio.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    threshold = np.percentile(levels, 95) * 10 ** (-15 / 20)
    first = max(0, int(near_ms / 10) - 50)
    for index in range(first, min(levels.size, int(near_ms / 10) + 30)):
        if levels[index] >= threshold:
            return index * 10.0
    return float(near_ms)


def offline_baseline(recordings: list[Recording], model_name: str) -> tuple[float, list[float], dict[str, str]]:
    """WER and per-file seconds of plain WhisperModel.transcribe (beam 5) with the same model."""
    from faster_whisper import WhisperModel

    from stt.engine import resolve_model

    model = WhisperModel(resolve_model(model_name), device="cpu", compute_type="int8")
    errors = length = 0
    seconds: list[float] = []
    texts: dict[str, str] = {}
    for recording in recordings:
        started = time.perf_counter()
        segments, _ = model.transcribe(recording.audio, beam_size=5, language="en")
        text = " ".join(s.text.strip() for s in segments)
        seconds.append(time.perf_counter() - started)
        texts[recording.name] = text
        e, n = word_errors(recording.reference, text)
        errors, length = errors + e, length + n
    return errors / max(length, 1), seconds, texts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, f"ws://127.0.0.1:{port}/ws/transcribe"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the local server did not become healthy")


def pct(values: list[float], q: float) -> str:
    if not values:
        return "   n/a"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return f"{ordered[index] * 1000:6.0f}"


async def run(args: argparse.Namespace) -> None:
    recordings = load_recordings(Path(args.audio_dir))
    process = None
    url = args.url
    if url is None:
        process, url = start_server()
    try:
        config = {"enable_timestamps": True, "language": "en"}
        jobs = [stream_one(url, recordings[i % len(recordings)], config, variant=i)
                for i in range(args.streams * args.repeat)]
        results: list[StreamResult] = []
        for start in range(0, len(jobs), args.streams):
            results += await asyncio.gather(*jobs[start:start + args.streams])
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)

    gather = lambda name: [v for r in results for v in getattr(r, name)]  # noqa: E731
    errors = length = 0
    for result in results:
        reference = next(r.reference for r in recordings if r.name == result.recording)
        e, n = word_errors(reference, result.text)
        errors, length = errors + e, length + n
    streamed_wer = errors / max(length, 1)
    baseline_wer, baseline_seconds, _ = offline_baseline(recordings, args.model)

    print(f"\nFasttalk STT streaming benchmark  ({args.streams} concurrent stream(s) x {args.repeat}, "
          f"{len(recordings)} recording(s), frames of {FRAME} samples, real-time pace)")
    print(f"server: {url}")
    print(f"{'figure (ms)':32} {'p50':>6} {'p95':>6} {'n':>5}")
    for label, name in [("partial latency", "partial_latencies"), ("partial update interval", "partial_intervals"),
                        ("word lag (spoken -> shown)", "word_lags"),
                        ("end of speech -> final", "final_latencies"), ("speech onset -> VAD event", "vad_latencies")]:
        values = gather(name)
        print(f"{label:32} {pct(values, 0.5)} {pct(values, 0.95)} {len(values):5d}")
    print(f"{'max lag behind real time':32} {max(r.lag_behind_real_time for r in results) * 1000:6.0f}")
    print(f"\n{'':32} {'WER':>6}")
    print(f"{'streamed finals':32} {streamed_wer * 100:5.1f}%")
    print(f"{'offline transcribe() beam 5':32} {baseline_wer * 100:5.1f}%   "
          f"({statistics.mean(baseline_seconds) * 1000:.0f} ms per file)")
    for result in results[: len(recordings)]:
        print(f"  {result.recording}: {result.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one locally)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of streams")
    parser.add_argument("--audio-dir", default=str(AUDIO_DIR))
    parser.add_argument("--model", default="tiny.en", help="model for the offline baseline")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
