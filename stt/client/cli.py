"""`python -m stt.client`: stream a file or the microphone, or load-test a server.

    python -m stt.client stream speech.mp3                 # partials in place, finals as lines
    python -m stt.client stream speech.wav --json          # one JSON server message per line
    python -m stt.client stream --mic                      # needs the sounddevice package
    python -m stt.client perf speech.wav [more.wav ...] --clients 4 --duration 30

The server URL comes from --url or FASTTALK_URL, the API key from --api-key or
FASTTALK_API_KEY (not needed when the server runs open, AUTH_REQUIRED=false).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

import numpy as np
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from stt import messages
from stt.client.audio import load_audio
from stt.client.perf import STTPerformanceTester, format_results
from stt.client.session import (DEFAULT_URL, AuthenticationError, Backoff, Callbacks, SttClientError,
                                open_session)
from stt.messages import SessionConfig

EXIT_OK, EXIT_USAGE, EXIT_FAILED = 0, 2, 1


# ANSI SGR: faint text, and back to normal.
DIM, RESET = "\x1b[2m", "\x1b[0m"


def partial_line(stable: str, unstable: str, width: int, dim: bool) -> str:
    """A partial for the status line: the stable words plain, the unstable ones after them
    dimmed when `dim` (they may still change). Wider than `width` characters, only its
    end is shown, counted in visible characters (the escape codes take no room)."""
    stable, unstable = stable.strip(), unstable.strip()
    gap = " " if stable and unstable else ""
    overflow = max(0, len(stable) + len(gap) + len(unstable) - max(0, width))
    shown_stable = (stable + gap)[overflow:]
    shown_unstable = unstable[max(0, overflow - len(stable) - len(gap)):]
    if dim and shown_unstable:
        shown_unstable = DIM + shown_unstable + RESET
    return shown_stable + shown_unstable


class TerminalDisplay:
    """Finals on their own lines; below them one status line, rewritten in place, with
    the progress bar and the current partial, its unstable words dimmed. Without a
    terminal: finals only. `dim`: dim the unstable words (default: unless NO_COLOR is set)."""

    def __init__(self, out: TextIO, total_seconds: float | None, dim: bool | None = None) -> None:
        self.out = out
        self.interactive = out.isatty()
        self.dim = self.interactive and (dim if dim is not None else not os.environ.get("NO_COLOR"))
        self.total = total_seconds
        self.sent = 0.0
        self.partial = ("", "")  # (stable, unstable)

    def progress(self, seconds: float) -> None:
        self.sent = seconds
        self._redraw()

    def show_partial(self, stable: str, unstable: str) -> None:
        self.partial = (stable, unstable)
        self._redraw()

    def show_final(self, text: str) -> None:
        self.partial = ("", "")
        if self.interactive:
            self.out.write("\r\x1b[K")
        if text:
            self.out.write(text + "\n")
        self._redraw()

    def show_error(self, code: str, message: str) -> None:
        if self.interactive:
            self.out.write("\r\x1b[K")
        print(f"error {code}: {message}", file=sys.stderr)
        self._redraw()

    def done(self) -> None:
        if self.interactive:
            self.out.write("\r\x1b[K")
        self.out.flush()

    def _redraw(self) -> None:
        if not self.interactive:
            return
        width = shutil.get_terminal_size((100, 20)).columns
        status = ""
        if self.total:
            filled = int(20 * min(1.0, self.sent / self.total))
            status = f"[{'#' * filled}{'.' * (20 - filled)}] {self.sent:5.1f}/{self.total:.1f}s "
        status = status[: width - 1]
        # The end of the partial, within the width left by the progress bar.
        line = status + partial_line(*self.partial, width - 1 - len(status), self.dim)
        self.out.write("\r\x1b[K" + line)
        self.out.flush()


async def stream_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    config = _session_config(args)
    if config is None:
        return EXIT_USAGE
    if args.mic:
        source: Any = _microphone(args.device)
        total, pace = None, None  # a microphone paces itself
    else:
        try:
            source = load_audio(args.file)
        except (OSError, ValueError) as exc:
            print(f"stt.client: {exc}", file=sys.stderr)
            return EXIT_USAGE
        total = len(source) / messages.SAMPLE_RATE
        pace = None if args.fast else args.pace
    display = None if args.json else TerminalDisplay(out, total)
    try:
        session = await open_session(args.url, config, api_key=args.api_key, token=args.token,
                                     callbacks=Callbacks(on_message=_message_printer(out, display)),
                                     backoff=Backoff(attempts=args.retries))
    except AuthenticationError as exc:
        print(f"stt.client: {exc}; pass --api-key or set FASTTALK_API_KEY", file=sys.stderr)
        return EXIT_FAILED
    except SttClientError as exc:
        print(f"stt.client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        await session.stream(source, pace=pace, on_progress=display.progress if display else None)
    except asyncio.CancelledError:
        pass  # Ctrl-C: end the session properly, so the last words still come back
    except ConnectionClosed:
        pass  # the server ended the session; its reason is in session_ended
    finally:
        ended = await session.end()
        if display is not None:
            display.done()
    if ended is None:
        print(f"stt.client: the connection closed without session_ended "
              f"(code {session.close_code} {session.close_reason})", file=sys.stderr)
        return EXIT_FAILED
    if ended.data.reason != "end_session":
        print(f"stt.client: the server ended the session: {ended.data.reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _session_config(args: argparse.Namespace) -> SessionConfig | None:
    """The session configuration the options ask for; None (said on stderr) when invalid."""
    chosen: dict[str, Any] = {}
    if args.language:
        chosen["language"] = args.language
    if args.no_partials:
        chosen["enable_partial_transcription"] = False
    if args.keyterm:
        chosen["keyterms"] = args.keyterm
    if args.prompt:
        chosen["prompt"] = args.prompt
    try:
        return SessionConfig(**chosen)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"stt.client: {problems}", file=sys.stderr)
        return None


def _message_printer(out: TextIO, display: TerminalDisplay | None) -> Callable[[Any], None]:
    """What to do with each server message: with no display (--json), print it as one
    JSON line; else show partials, finals and errors on the display."""

    def on_message(message: Any) -> None:
        if display is None:
            payload = message.payload if isinstance(message, messages.UnknownServerMessage) \
                else message.model_dump(mode="json", exclude_unset=True)
            out.write(json.dumps(payload) + "\n")
            out.flush()
        elif isinstance(message, messages.TranscriptionPartial):
            display.show_partial(message.data.stable_text, message.data.unstable_text)
        elif isinstance(message, messages.TranscriptionFinal):
            display.show_final(message.data.text)
        elif isinstance(message, messages.Error):
            display.show_error(message.error.code, message.error.message)

    return on_message


async def _microphone(device: str | None) -> AsyncIterator[np.ndarray]:
    """16 kHz mono float32 blocks from the default (or named) input device."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise SystemExit(f"stt.client: microphone input needs the sounddevice package and PortAudio ({exc})")
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def captured(data: np.ndarray, frames: int, moment: Any, status: Any) -> None:
        loop.call_soon_threadsafe(blocks.put_nowait, data[:, 0].copy())

    try:
        stream = sounddevice.InputStream(samplerate=messages.SAMPLE_RATE, channels=1, dtype="float32",
                                         blocksize=1024, device=device, callback=captured)
    except Exception as exc:  # PortAudioError has no stable import path
        raise SystemExit(f"stt.client: cannot open the microphone: {exc}")
    with stream:
        print("stt.client: listening; Ctrl-C to stop", file=sys.stderr)
        while True:
            yield await blocks.get()


async def perf_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    audio = [load_audio(path) for path in args.files] if args.files else None
    tester = STTPerformanceTester(args.url, api_key=args.api_key, clients=args.clients, audio=audio,
                                  language=args.language)
    try:
        await tester.connect()
    except SttClientError as exc:
        print(f"stt.client: {exc}", file=sys.stderr)
        return EXIT_FAILED
    results = await tester.run_performance_test(duration_seconds=args.duration)
    out.write((json.dumps(results, indent=2) if args.json else format_results(results)) + "\n")
    return EXIT_OK if results["sessions_failed"] == 0 else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stt.client", description="Fasttalk STT client")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("FASTTALK_URL", DEFAULT_URL),
                        help=f"WebSocket URL (default: $FASTTALK_URL or {DEFAULT_URL})")
    common.add_argument("--api-key", default=os.environ.get("FASTTALK_API_KEY"),
                        help="API key (default: $FASTTALK_API_KEY)")
    common.add_argument("--token", default=None, help="a token from POST /auth/token instead of a key")
    common.add_argument("--language", default=None, help="language code (default: the server's)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True)

    stream = commands.add_parser("stream", parents=[common], help="transcribe a file or the microphone")
    stream.add_argument("file", nargs="?", help="audio file (any common format)")
    stream.add_argument("--mic", action="store_true", help="stream the microphone instead of a file")
    stream.add_argument("--device", default=None, help="input device for --mic")
    stream.add_argument("--pace", type=float, default=1.0, help="1.0 = real time (default), 2.0 = twice as fast")
    stream.add_argument("--fast", action="store_true", help="send as fast as the server takes it")
    stream.add_argument("--no-partials", action="store_true", help="finals only")
    stream.add_argument("--keyterm", action="append", default=[], metavar="TERM",
                        help="a name or phrase to spell right (repeat for more, at most 100)")
    stream.add_argument("--prompt", default=None, metavar="TEXT",
                        help="text read as what came before the audio: the topic, the style (at most 2000 characters)")
    stream.add_argument("--retries", type=int, default=5, help="connection attempts (default 5)")

    perf = commands.add_parser("perf", parents=[common], help="measure latency with simulated clients")
    perf.add_argument("files", nargs="*", metavar="file",
                      help="speech to loop; several files are taken by the clients in turn "
                           "(default: synthesized with espeak-ng)")
    perf.add_argument("--clients", type=int, default=1, help="concurrent simulated clients")
    perf.add_argument("--duration", type=float, default=30.0, help="seconds of streaming per client")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "stream" and bool(args.file) == bool(args.mic):
        print("stt.client stream: give an audio FILE or --mic", file=sys.stderr)
        return EXIT_USAGE
    command = stream_command if args.command == "stream" else perf_command
    try:
        return asyncio.run(command(args))
    except KeyboardInterrupt:
        return EXIT_FAILED
