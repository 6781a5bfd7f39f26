"""Performance tester: N simulated clients stream speech at real time against any running
server and report partial/final latencies and message counts.

    tester = STTPerformanceTester("ws://stt-service:8000/ws/transcribe", clients=4)
    await tester.connect()
    results = await tester.run_performance_test(duration_seconds=30)
    print(results["avg_partial_latency_ms"], results["avg_final_latency_ms"], results["total_messages"])

Each client streams its own audio: the speech given (a recording, a list of recordings
taken in turn, or a synthesized sentence) at a gain of its own, so no two clients send
identical audio (the server's result cache would answer the copies without decoding).

Latencies are measured by the client, as a backend experiences them:
- partial latency: from the moment the audio a partial covers had been sent to the
  partial's arrival;
- final latency: from the moment the utterance's last audio (its `end_ms`) had been sent
  to the final's arrival. It includes the end-of-speech silence the server waits for
  (`final_chunk_duration`), less the 200 ms of audio kept after the speech;
  `avg_final_processing_ms` is the server's own figure without that wait.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from stt import messages
from stt.client.audio import load_audio
from stt.client.session import DEFAULT_URL, Backoff, Callbacks, SttClientError, SttSession, open_session
from stt.messages import SAMPLE_RATE, SessionConfig

SYNTHETIC_TEXT = ("The quick brown fox jumps over the lazy dog. "
                  "Please schedule a meeting with the design team for tomorrow afternoon.")
# Silence between repetitions of the speech, so that each repetition ends in a final.
GAP_SECONDS = 1.5


@dataclass
class ClientRecord:
    """What one simulated client saw."""

    partial_latencies: list[float] = field(default_factory=list)
    final_latencies: list[float] = field(default_factory=list)
    final_processing: list[float] = field(default_factory=list)
    partial_processing: list[float] = field(default_factory=list)
    message_counts: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    audio_seconds: float = 0.0
    failure: str | None = None
    send_lag: float = 0.0


class STTPerformanceTester:
    def __init__(self, stt_endpoint: str = DEFAULT_URL, *, api_key: str | None = None, clients: int = 1,
                 audio: np.ndarray | Sequence[np.ndarray] | None = None, language: str | None = None,
                 pace: float = 1.0) -> None:
        """`audio`: 16 kHz float32 speech, or several recordings (client i streams the
        i-th, in turn); default a sentence synthesized with espeak-ng."""
        self.stt_endpoint = stt_endpoint
        self.api_key = api_key
        self.clients = clients
        self.language = language
        self.pace = pace
        self._audio = [audio] if isinstance(audio, np.ndarray) else (list(audio) if audio is not None else None)
        self.server: messages.SessionStartedData | None = None

    async def connect(self) -> None:
        """Check that the server answers: open a session and end it (this also warms it up)."""
        session = await open_session(self.stt_endpoint, self._config("perf-probe"), api_key=self.api_key,
                                     backoff=Backoff(attempts=3))
        self.server = session.started.data
        await session.end()

    async def run_performance_test(self, duration_seconds: float = 30) -> dict[str, Any]:
        """Stream `duration_seconds` of speech from each client at once; the results dict."""
        speeches = self._speech()
        gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), np.float32)
        started = time.monotonic()
        records = await asyncio.gather(*(
            self._client(index, client_audio(index, np.concatenate([speeches[index % len(speeches)], gap]),
                                             duration_seconds))
            for index in range(self.clients)))
        return self._results(records, time.monotonic() - started, duration_seconds)

    async def _client(self, index: int, audio: Iterator[np.ndarray]) -> ClientRecord:
        record = ClientRecord()
        holder: dict[str, SttSession] = {}

        def on_message(message: Any) -> None:
            arrived = time.monotonic()
            record.message_counts[message.type] += 1
            session = holder.get("session")
            if session is None:
                return
            if isinstance(message, messages.TranscriptionPartial):
                data = message.data
                sent = session.progress.time_audio_sent(_samples(data.start_ms + data.audio_duration_ms))
                if sent is not None:
                    record.partial_latencies.append(arrived - sent)
                record.partial_processing.append(data.processing_time_ms / 1000)
            elif isinstance(message, messages.TranscriptionFinal):
                sent = session.progress.time_audio_sent(_samples(message.data.end_ms))
                if sent is not None:
                    record.final_latencies.append(arrived - sent)
                record.final_processing.append(message.data.processing_time_ms / 1000)
            elif isinstance(message, messages.Error):
                record.error_codes[message.error.code] += 1

        try:
            session = await open_session(self.stt_endpoint, self._config(f"perf-{index}"), api_key=self.api_key,
                                         callbacks=Callbacks(on_message=on_message))
        except SttClientError as exc:
            record.failure = str(exc)
            return record
        holder["session"] = session
        began = time.monotonic()
        await session.stream(audio, pace=self.pace)
        record.audio_seconds = session.progress.samples_sent / SAMPLE_RATE
        record.send_lag = max(0.0, (time.monotonic() - began) - record.audio_seconds / self.pace)
        ended = await session.end()
        if ended is None:
            record.failure = f"closed without session_ended (code {session.close_code})"
        return record

    def _config(self, name: str) -> SessionConfig:
        chosen: dict[str, Any] = {"user_id": name}
        if self.language:
            chosen["language"] = self.language
        return SessionConfig(**chosen)

    def _speech(self) -> list[np.ndarray]:
        if not self._audio:
            self._audio = [synthesize(SYNTHETIC_TEXT)]
        return self._audio

    def _results(self, records: list[ClientRecord], wall: float, duration: float) -> dict[str, Any]:
        partial = [x for r in records for x in r.partial_latencies]
        final = [x for r in records for x in r.final_latencies]
        counts: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for record in records:
            counts.update(record.message_counts)
            errors.update(record.error_codes)
        return {
            "clients": self.clients,
            "duration_seconds": duration,
            "wall_seconds": round(wall, 2),
            "audio_seconds_sent": round(sum(r.audio_seconds for r in records), 1),
            "sessions_failed": sum(1 for r in records if r.failure),
            "failures": [r.failure for r in records if r.failure],
            "avg_partial_latency_ms": _mean_ms(partial),
            "p50_partial_latency_ms": _percentile_ms(partial, 50),
            "p95_partial_latency_ms": _percentile_ms(partial, 95),
            "avg_final_latency_ms": _mean_ms(final),
            "p50_final_latency_ms": _percentile_ms(final, 50),
            "p95_final_latency_ms": _percentile_ms(final, 95),
            "avg_partial_processing_ms": _mean_ms([x for r in records for x in r.partial_processing]),
            "avg_final_processing_ms": _mean_ms([x for r in records for x in r.final_processing]),
            "partial_count": counts["transcription_partial"],
            "final_count": counts["transcription_final"],
            "total_messages": sum(counts.values()),
            "messages_by_type": dict(sorted(counts.items())),
            "errors_by_code": dict(sorted(errors.items())),
            "max_send_lag_seconds": round(max((r.send_lag for r in records), default=0.0), 3),
        }


def client_audio(index: int, loop_audio: np.ndarray, duration_seconds: float) -> Iterator[np.ndarray]:
    """Client `index`'s audio: `loop_audio` at a gain of its own, repeated to fill
    `duration_seconds` (at least once), in chunks (one copy per client in memory)."""
    mine = (loop_audio * np.float32(1.0 - (index % 4000 + 1) * 1e-4)).astype(np.float32)
    total = max(mine.size, int(duration_seconds * SAMPLE_RATE))
    sent = 0
    while sent < total:
        chunk = mine[: total - sent]
        yield chunk
        sent += chunk.size


def synthesize(text: str) -> np.ndarray:
    """Speech from espeak-ng, 16 kHz float32 (for when no recording is given)."""
    if shutil.which("espeak-ng") is None:
        raise SttClientError("no speech given and espeak-ng is not installed: pass an audio file")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
        return load_audio(path)


def format_results(results: dict[str, Any]) -> str:
    lines = [
        f"clients {results['clients']}, {results['duration_seconds']:.0f} s each, "
        f"{results['audio_seconds_sent']} s of audio sent in {results['wall_seconds']} s",
        f"Partial Latency: {_show(results['avg_partial_latency_ms'])} avg, "
        f"p50 {_show(results['p50_partial_latency_ms'])}, p95 {_show(results['p95_partial_latency_ms'])}",
        f"Final Latency: {_show(results['avg_final_latency_ms'])} avg, "
        f"p50 {_show(results['p50_final_latency_ms'])}, p95 {_show(results['p95_final_latency_ms'])} "
        f"(server processing {_show(results['avg_final_processing_ms'])})",
        f"Total Messages: {results['total_messages']} "
        + ", ".join(f"{kind} {count}" for kind, count in results["messages_by_type"].items()),
    ]
    if results["errors_by_code"]:
        lines.append("Errors: " + ", ".join(f"{c} {n}" for c, n in results["errors_by_code"].items()))
    if results["failures"]:
        lines.append("Failed sessions: " + "; ".join(results["failures"]))
    return "\n".join(lines)


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


def _mean_ms(values: list[float]) -> float | None:
    return round(1000 * sum(values) / len(values), 1) if values else None


def _percentile_ms(values: list[float], q: float) -> float | None:
    return round(1000 * float(np.percentile(values, q)), 1) if values else None


def _show(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}ms"
