"""Many distinct streams of real speech, and the client of one stream, for load
benchmarks (bench/capacity.py).

Distinct: the server's result cache answers identical audio at once, so concurrent
streams of one recording would look cheap. Each stream here is its own sequence of
utterances: pieces of the two-minute talk (long_gates_ted.wav) cut at offsets of the
stream's own, and the short clips of ../shared/audio, in its own order, each followed
by a pause of 0.8-1.6 s (so that each ends in a final), at a gain of its own.

A stream is sent in 64 ms frames on the client's clock (real time, like a microphone)
and measured by the client against the moment it sent the audio concerned:
  final latency    a final's arrival - sending of its last word's end (word timestamps;
                   the utterance's end when it has none): includes the end-of-speech
                   silence the server waits for (final_chunk_duration, 0.5 s)
  partial interval time between consecutive partials of one utterance
  lag              how far the sending fell behind real time (the server stopped reading
                   the socket, or the machine starved the client)
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

SAMPLE_RATE = 16000
FRAME = 1024  # 64 ms
AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"
TALK = "long_gates_ted.wav"
PIECE_SECONDS = (3.0, 8.0)  # length of a piece of the talk
PAUSE_SECONDS = (0.8, 1.6)


def load_clips(audio_dir: Path = AUDIO_DIR) -> dict[str, np.ndarray]:
    """Every recording of the folder, 16 kHz mono float32, by file name."""
    from faster_whisper.audio import decode_audio

    clips = {path.name: decode_audio(str(path), SAMPLE_RATE) for path in sorted(audio_dir.iterdir())
             if path.suffix in (".wav", ".flac")}
    if TALK not in clips or len(clips) < 2:
        raise SystemExit(f"{audio_dir} lacks {TALK} or the short clips (see its README)")
    return clips


def stream_audio(index: int, seconds: float, clips: dict[str, np.ndarray]) -> np.ndarray:
    """Stream `index`'s audio, at least `seconds` long: its own utterances and pauses."""
    rng = np.random.default_rng(7919 + index)
    talk = clips[TALK]
    short = sorted(name for name in clips if name != TALK)
    gain = np.float32(0.9 - (index % 400) * 5e-4)  # never byte-identical to another stream
    pieces: list[np.ndarray] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        if rng.random() < 0.5:
            length = int(rng.uniform(*PIECE_SECONDS) * SAMPLE_RATE)
            start = int(rng.integers(0, talk.size - length))
            piece = talk[start:start + length]
        else:
            piece = clips[short[int(rng.integers(0, len(short)))]]
        pause = np.zeros(int(rng.uniform(*PAUSE_SECONDS) * SAMPLE_RATE), np.float32)
        pieces += [piece * gain, pause]
        total += piece.size + pause.size
    return np.concatenate(pieces).astype(np.float32)


@dataclass
class StreamFigures:
    final_latencies: list[float] = field(default_factory=list)
    partial_intervals: list[float] = field(default_factory=list)
    lag: float = 0.0
    finals: int = 0
    finished: bool = False  # session_ended arrived within the wait
    refused: dict | None = None  # the error that turned the session away
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)


async def paced_stream(url: str, audio: np.ndarray, wait_s: float = 30.0,
                       config: dict | None = None) -> StreamFigures:
    """Stream `audio` at real-time pace in one session, then end it; the client's figures."""
    figures = StreamFigures()
    config = {"language": "en", "enable_timestamps": True, **(config or {})}
    async with websockets.connect(url, max_size=None, open_timeout=60) as ws:
        try:
            await ws.send(json.dumps({"type": "start_session", "session_config": config}))
        except websockets.ConnectionClosed:
            pass  # refused before it spoke: the error is waiting to be read
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        except websockets.ConnectionClosed:
            first = {}
        if first.get("type") != "session_started":
            figures.refused = first.get("error", {"code": "closed"})
            await ws.wait_closed()
            figures.close_code = ws.close_code
            return figures
        t0 = time.perf_counter()
        reading = asyncio.create_task(_read(ws, figures, t0))
        for index in range(0, audio.size, FRAME):
            try:
                await ws.send(audio[index:index + FRAME].astype("<f4").tobytes())
            except websockets.ConnectionClosed:
                break
            delay = t0 + (index + FRAME) / SAMPLE_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                figures.lag = max(figures.lag, -delay)
        try:
            await ws.send(json.dumps({"type": "end_session"}))
        except websockets.ConnectionClosed:
            pass
        done, _ = await asyncio.wait([reading], timeout=wait_s)
        figures.finished = bool(done) and figures.finished
        reading.cancel()
    figures.close_code = ws.close_code
    return figures


async def _read(ws, figures: StreamFigures, t0: float) -> None:
    def sent_at(ms: float) -> float:
        """When the frame holding the sample at `ms` of the session timeline was sent."""
        return t0 + (int(ms * SAMPLE_RATE / 1000) // FRAME) * FRAME / SAMPLE_RATE

    last_partial: dict[str, float] = {}
    async for raw in ws:
        now = time.perf_counter()
        message = json.loads(raw)
        kind, data = message["type"], message.get("data", {})
        if kind == "transcription_partial":
            utterance = data["utterance_id"]
            if utterance in last_partial:
                figures.partial_intervals.append(now - last_partial[utterance])
            last_partial[utterance] = now
        elif kind == "transcription_final":
            figures.finals += 1
            words = data.get("timestamps") or []
            end_ms = data["start_ms"] + words[-1]["end_ms"] if words else data["end_ms"]
            if data["text"]:
                figures.final_latencies.append(now - sent_at(end_ms))
        elif kind == "error":
            figures.errors.append(message["error"]["code"])
        elif kind == "session_ended":
            figures.finished = True
            return


def quantile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
