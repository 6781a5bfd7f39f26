"""Stream speech into a Fasttalk STT server at real-time pace; print latency and WER
beside a plain offline transcribe() baseline measured in the same run.

    .venv/bin/python bench/stream_latency.py                    # starts a local server itself
    .venv/bin/python bench/stream_latency.py --streams 1,4 --repeat 3
    .venv/bin/python bench/stream_latency.py --url ws://host:8000/ws/transcribe

Recordings: those of ../shared/audio with reference texts, plus (when espeak-ng is
installed) synthetic sentences. Each stream sends 32 ms frames on the clock, like a
microphone. Every figure is measured by the client, against the moment it sent the
audio concerned:
  partial latency      a partial's arrival - sending of the last sample it covers
  partial interval     time between consecutive partials of one utterance
  word lag             a final's word first shown (in a partial, else in the final) -
                       sending of the audio where the word ends (final's word timestamps)
  final latency        a final's arrival - sending of the utterance's last spoken word,
                       so it includes the end-of-utterance silence wait
  VAD latency          voice_activity_detected's arrival - sending of the speech onset,
                       found from the audio's energy (independent of the VAD under test)
  lag behind real time how late the client's own sending ran (a loaded machine shows it)
The baseline runs faster-whisper's stock WhisperModel.transcribe() on the same audio
with the same model: beam 1 for a partial of 3 s, beam 5 with word timestamps for a
final, the way a server built on transcribe() would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")

from stt.evaluation import normalize_text, word_errors  # noqa: E402

AUDIO_DIR = ROOT.parent / "shared" / "audio"
SAMPLE_RATE = 16000
FRAME = 512  # 32 ms, the low end of the design document's 512-2048
SILENCE_AFTER = 1.0  # seconds of silence streamed after each recording
END_SILENCE = 0.5  # the server's default final_chunk_duration
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, "
            "ask what you can do for your country.")
SYNTHETIC = [
    "Please turn on the kitchen lights and set the temperature to twenty degrees.",
    "What is the weather going to be like tomorrow morning in Boston?",
    "Remind me to call my mother at six o'clock this evening.",
    "Play some relaxing music in the living room.",
    "How many kilometers are there in a marathon?",
    "Cancel my meeting with the design team on Friday afternoon.",
    "Add milk, eggs and bread to my shopping list.",
    "Tell me a short story about a dragon who learns to fly.",
]


@dataclass
class Recording:
    name: str
    audio: np.ndarray
    reference: str
    synthetic: bool


@dataclass
class StreamResult:
    recording: Recording
    text: str = ""
    partial_latencies: list[float] = field(default_factory=list)
    partial_intervals: list[float] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    vad_latencies: list[float] = field(default_factory=list)
    word_lags: list[float] = field(default_factory=list)
    lag_behind_real_time: float = 0.0
    finished: bool = True  # session_ended arrived within the wait
    started_at: float = 0.0  # perf_counter() when the first frame was sent
    messages: list[tuple[float, dict]] = field(default_factory=list)  # (arrival, message), for other benchmarks


def load_recordings(audio_dir: Path, synthetic: bool) -> list[Recording]:
    """The recordings of the audio folder that have a reference text (NAME.txt beside
    NAME.wav; jfk.flac's is the well-known sentence), and synthetic sentences from
    espeak-ng. A recording without a reference (the long talk) is not scored here."""
    from faster_whisper.audio import decode_audio

    recordings = []
    for path in sorted(audio_dir.iterdir()):
        reference_file = path.with_suffix(".txt")
        if path.suffix not in (".wav", ".flac"):
            continue
        if reference_file.is_file():
            reference = reference_file.read_text().strip()
        elif path.name == "jfk.flac":
            reference = JFK_TEXT
        else:
            continue
        recordings.append(Recording(path.name, decode_audio(str(path), SAMPLE_RATE), reference, False))
    if synthetic and shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as folder:
            for index, sentence in enumerate(SYNTHETIC):
                wav = Path(folder) / f"s{index}.wav"
                subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), sentence], check=True)
                audio = decode_audio(str(wav), SAMPLE_RATE)
                recordings.append(Recording(f"espeak-{index}", audio, sentence, True))
    if not recordings:
        raise SystemExit(f"no recordings with reference texts found in {audio_dir}")
    return recordings


def first_shown(word: list[str], index: int, partials: list[tuple[float, list[str]]], final_at: float) -> float:
    """When a final's word first appeared: the first partial holding it near the same
    position (two words either way), else the final itself."""
    if not word:
        return final_at
    for arrived, words in partials:
        if word[0] in words[max(0, index - 2):index + 3]:
            return arrived
    return final_at


def frame_sent_at(started_at: float, ms: float) -> float:
    """When the 32 ms frame holding the sample at `ms` of the session timeline was sent,
    for a stream that sent its first frame at `started_at` and then kept real-time pace."""
    return started_at + (int(ms * SAMPLE_RATE / 1000) // FRAME) * FRAME / SAMPLE_RATE


def energy_onset_ms(audio: np.ndarray, near_ms: float) -> float:
    """Where speech starts near `near_ms`: the first 10 ms frame whose level is within
    15 dB of the recording's loud frames, searched from 500 ms before `near_ms`."""
    frame = SAMPLE_RATE // 100
    levels = np.sqrt(np.mean(audio[: audio.size // frame * frame].reshape(-1, frame) ** 2, axis=1))
    threshold = np.percentile(levels, 95) * 10 ** (-15 / 20)
    for index in range(max(0, int(near_ms / 10) - 50), min(levels.size, int(near_ms / 10) + 30)):
        if levels[index] >= threshold:
            return index * 10.0
    return float(near_ms)


async def stream_one(url: str, recording: Recording, variant: int, wait_s: float | None = None) -> StreamResult:
    """Stream one recording; after end_session, wait for the session's end, at most
    `wait_s` seconds when given (then `finished` is False and the rest is what came)."""
    result = StreamResult(recording)
    # Each stream gets its own tiny gain change: real audio never repeats byte for byte,
    # and the server's result cache must not make a repeated file look fast.
    gain = np.float32(1.0 - variant * 1e-4)
    audio = np.concatenate([recording.audio * gain, np.zeros(int(SILENCE_AFTER * SAMPLE_RATE), np.float32)])
    finals: list[str] = []
    last_partial: dict[str, float] = {}
    shown: dict[str, list[tuple[float, list[str]]]] = {}
    config = {"enable_timestamps": True, "language": "en"}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start_session", "session_config": config}))
        assert json.loads(await ws.recv())["type"] == "session_started"
        t0 = result.started_at = time.perf_counter()

        def sent_at(ms: float) -> float:
            return frame_sent_at(t0, ms)

        async def reader() -> None:
            async for raw in ws:
                now = time.perf_counter()
                message = json.loads(raw)
                result.messages.append((now, message))
                data = message.get("data", {})
                kind = message["type"]
                if kind == "transcription_partial":
                    utterance = data["utterance_id"]
                    result.partial_latencies.append(now - sent_at(data["start_ms"] + data["audio_duration_ms"] - 1))
                    if utterance in last_partial:
                        result.partial_intervals.append(now - last_partial[utterance])
                    last_partial[utterance] = now
                    shown.setdefault(utterance, []).append((now, normalize_text(data["text"])))
                elif kind == "transcription_final":
                    finals.append(data["text"])
                    words = data.get("timestamps") or []
                    if words:
                        result.final_latencies.append(now - sent_at(data["start_ms"] + words[-1]["end_ms"]))
                    partials = shown.get(data["utterance_id"], [])
                    for index, word in enumerate(words):
                        spoken = sent_at(data["start_ms"] + word["end_ms"])
                        result.word_lags.append(first_shown(normalize_text(word["word"]), index, partials, now) - spoken)
                elif kind == "voice_activity_detected":
                    onset = energy_onset_ms(recording.audio, data["audio_offset_ms"])
                    result.vad_latencies.append(now - sent_at(onset))

        reading = asyncio.create_task(reader())
        for index in range(0, audio.size, FRAME):
            await ws.send(audio[index:index + FRAME].astype("<f4").tobytes())
            delay = t0 + (index + FRAME) / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.lag_behind_real_time = max(result.lag_behind_real_time, -delay)
        await ws.send(json.dumps({"type": "end_session"}))
        if wait_s is None:
            await asyncio.wait_for(reading, 120)
        else:
            done, _ = await asyncio.wait([reading], timeout=wait_s)
            result.finished = bool(done)
            reading.cancel()
    result.text = " ".join(finals)
    return result


@dataclass
class Baseline:
    wer_real: float | None
    wer_synthetic: float | None
    partial_seconds: list[float]
    final_seconds: list[float]


def offline_baseline(recordings: list[Recording], model_name: str) -> Baseline:
    """Stock WhisperModel.transcribe() with the same model on the same audio."""
    from faster_whisper import WhisperModel

    from stt.engine import resolve_model

    model = WhisperModel(resolve_model(model_name), device="cpu", compute_type="int8")
    errors = {False: [0, 0], True: [0, 0]}
    partial_seconds, final_seconds = [], []
    for recording in recordings:
        started = time.perf_counter()
        segments, _ = model.transcribe(recording.audio, beam_size=5, language="en", word_timestamps=True)
        text = " ".join(s.text.strip() for s in segments)
        final_seconds.append(time.perf_counter() - started)
        e, n = word_errors(recording.reference, text)
        errors[recording.synthetic][0] += e
        errors[recording.synthetic][1] += n
        started = time.perf_counter()
        list(model.transcribe(recording.audio[: 3 * SAMPLE_RATE], beam_size=1, language="en",
                              without_timestamps=True)[0])
        partial_seconds.append(time.perf_counter() - started)

    def rate(synthetic: bool) -> float | None:
        e, n = errors[synthetic]
        return e / n if n else None

    return Baseline(rate(False), rate(True), partial_seconds, final_seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path = ROOT, env: dict[str, str] | None = None,
                 log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`manage.py serve` of the tree at `root` (another checkout, for a before/after
    comparison), with `env` (default: this process's), its output to `log` if given."""
    port = free_port()
    output = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port), "--monitoring-port", "0"],
        cwd=root, stdout=output, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        # The benchmark's own local server runs open, like bin/serve, and admits every
        # stream (admission by capacity would refuse streams that start together on a
        # fresh process: bench/capacity.py measures it).
        env=env if env is not None else {**os.environ, "AUTH_REQUIRED": os.environ.get("AUTH_REQUIRED", "false"),
                                         "CAPACITY_ADMISSION": os.environ.get("CAPACITY_ADMISSION", "false")},
    )
    if log:
        output.close()  # the server holds its own copy
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process, f"ws://127.0.0.1:{port}/ws/transcribe"
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the local server did not become healthy")


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] * 1000


def streamed_wer(results: list[StreamResult], synthetic: bool) -> float | None:
    errors = length = 0
    for result in results:
        if result.recording.synthetic == synthetic:
            e, n = word_errors(result.recording.reference, result.text)
            errors, length = errors + e, length + n
    return errors / length if length else None


async def run_round(url: str, recordings: list[Recording], streams: int, repeat: int) -> list[StreamResult]:
    """`streams` concurrent sessions, each streaming every recording in turn, `repeat` times."""
    variant = iter(range(1, 1_000_000))

    async def one_session_series(offset: int) -> list[StreamResult]:
        out = []
        for round_index in range(repeat):
            for index in range(len(recordings)):
                recording = recordings[(index + offset) % len(recordings)]
                out.append(await stream_one(url, recording, next(variant)))
        return out

    series = await asyncio.gather(*[one_session_series(offset) for offset in range(streams)])
    return [result for group in series for result in group]


def fmt(value: float | None, width: int = 6) -> str:
    return f"{value:{width}.0f}" if value is not None else f"{'n/a':>{width}}"


def pct(value: float | None) -> str:
    return f"{value * 100:5.1f}%" if value is not None else "  n/a "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one locally)")
    parser.add_argument("--streams", default="1,4", help="comma-separated concurrent stream counts")
    parser.add_argument("--repeat", type=int, default=2, help="times each stream plays every recording")
    parser.add_argument("--audio-dir", default=str(AUDIO_DIR))
    parser.add_argument("--no-synthetic", action="store_true", help="real recordings only")
    parser.add_argument("--model", default="tiny.en", help="model of the offline baseline")
    args = parser.parse_args()
    counts = [int(c) for c in args.streams.split(",")]
    recordings = load_recordings(Path(args.audio_dir), synthetic=not args.no_synthetic)

    process, url = (None, args.url) if args.url else start_server()
    runs: dict[int, list[StreamResult]] = {}
    try:
        for count in counts:
            runs[count] = asyncio.run(run_round(url, recordings, count, args.repeat))
    finally:
        if process is not None:
            process.terminate()
            process.wait(15)
    baseline = offline_baseline(recordings, args.model)

    speech_seconds = sum(r.audio.size for r in recordings) / SAMPLE_RATE
    print(f"\nFasttalk STT streaming benchmark: {len(recordings)} recordings ({speech_seconds:.0f} s of speech; "
          f"{sum(not r.synthetic for r in recordings)} real, {sum(r.synthetic for r in recordings)} synthetic), "
          f"each played {args.repeat}x per stream, 32 ms frames at real-time pace; server {url}")
    header = f"{'figure (ms)':30}" + "".join(f"{f'{c} stream(s) p50/p95':>22}" for c in counts) + f"{'stock transcribe()':>22}"
    print(header)
    print("-" * len(header))
    stock_partial = sum(baseline.partial_seconds) / len(baseline.partial_seconds) * 1000
    stock_final = sum(baseline.final_seconds) / len(baseline.final_seconds) * 1000
    rows = [
        ("partial latency", "partial_latencies", f"{stock_partial:.0f} (beam 1, 3 s)"),
        ("partial update interval", "partial_intervals", f">= {stock_partial:.0f}"),
        ("word lag (spoken -> shown)", "word_lags", "n/a"),
        ("end of speech -> final", "final_latencies", f"~{END_SILENCE * 1000 + stock_final:.0f} (wait + beam 5)"),
        ("speech onset -> VAD event", "vad_latencies", "n/a"),
    ]
    for label, name, stock in rows:
        line = f"{label:30}"
        for count in counts:
            values = [v for r in runs[count] for v in getattr(r, name)]
            line += f"{fmt(quantile_ms(values, 0.5), 10)} /{fmt(quantile_ms(values, 0.95), 7)}   "
        print(line + f"{stock:>22}")
    line = f"{'max lag behind real time':30}"
    for count in counts:
        line += f"{fmt(max(r.lag_behind_real_time for r in runs[count]) * 1000, 18)}    "
    print(line)
    line = f"{'longest partial gap':30}"
    for count in counts:
        gaps = [v for r in runs[count] for v in r.partial_intervals]
        line += f"{fmt(max(gaps) * 1000 if gaps else None, 18)}    "
    print(line)
    print()
    print(f"{'WER':30}" + "".join(f"{f'{c} stream(s)':>22}" for c in counts) + f"{'stock transcribe()':>22}")
    for label, synthetic, stock in (("real recordings", False, baseline.wer_real),
                                    ("synthetic (espeak-ng)", True, baseline.wer_synthetic)):
        print(f"{label:30}" + "".join(f"{pct(streamed_wer(runs[c], synthetic)):>22}" for c in counts)
              + f"{pct(stock):>22}")
    print("\nstreamed finals, first stream:")
    for result in runs[counts[0]][: len(recordings)]:
        print(f"  {result.recording.name}: {result.text}")


if __name__ == "__main__":
    main()
