"""Turn latency a voice assistant feels (issue 15): this tree (NOW) beside an earlier
revision (BEFORE), measured in the same run on the same machine.

    .venv/bin/python bench/turn_latency.py                          # NOW only, local server
    .venv/bin/python bench/turn_latency.py --baseline-rev 4398e61   # BEFORE and NOW
    .venv/bin/python bench/turn_latency.py --url ws://host:8000/ws/transcribe  # a running server

With --baseline-rev, REV is checked out in a temporary detached git worktree and served
from there with this same Python; its scenario runs, its server stops, and then a server
of this tree runs the same scenario (never both at once). Each local server runs
embedded: SQLite in a temporary folder of its own (migrated first), the in-memory
channel layer, open. Two settings differ from the defaults: REFINE_FINALS=0 (a
refinement re-decodes a final after it was sent, on a worker in production; in the
embedded mode it would take the CPU from the model under test) and CAPACITY_ADMISSION=0
(the load rounds must run all their streams, not be turned away).

Streaming is bench/stream_latency.py's: 32 ms float32 frames at real-time pace, 1 s of
silence after each recording, a tiny gain change per play so the server's result cache
cannot answer a repeat, every time on the client's clock against the sending of the
audio concerned. The single-stream round plays each real recording of ../shared/audio
(those with reference texts) --repeat times, one at a time, after one untimed warm-up
play. Figures [target]:

 1 speech end -> final p50/p95 [<= 350 / <= 600 ms]: a non-empty final's arrival - the
   sending of the frame holding the end of the last speech within the final's audio.
   Speech is found from the audio's energy (10 ms frames within 15 dB of the
   recording's loud frames), independent of the VAD and the model.
 2 speech onset -> first partial p50 [<= 250 ms]: per utterance announced by
   voice_activity_detected, its first partial's arrival - the sending of the energy
   onset near the event's audio_offset_ms (utterances without a partial are left out).
 3 stable words changed [0]: words a partial's stable_text committed that a later
   partial's stable_text or the final does not hold at the same position (each
   (position, word) once per utterance).
 4 revisions per final word [<= 0.25]: distinct (position, word) pairs shown in any
   partial's text that are not the final's word there, over the finals' words.
 5 word lag p50 [<= 300 ms]: as stream_latency measures it (a final's word first shown,
   in a partial or else the final, - the sending of the audio where the word ends).
 6 sentences cut in two [0]: finals ending inside a reference sentence, per clip. The
   concatenated finals are aligned to the reference (word edit distance); a final whose
   end maps to no sentence end (. ? ! or the clip's end; SENTENCE_ENDS for references
   without punctuation) cuts one. Numerals written as one token ("90210") are spelled
   digit by digit for this alignment, so a digit string keeps its length in words.
 7 accuracy per clip [streamed <= offline on every clip]: the streamed finals' word
   error rate beside faster-whisper's offline transcribe(beam_size=5) of the whole clip
   with the same model; and whether jfk.flac's streamed text starts with "and so my
   fellow americans".
 8 load [finals p95 <= 1000 ms at 4 streams, <= 1500 at 12; lag behind real time
   < 100 ms]: --streams concurrent streams, each playing a different recording (the real
   clips, espeak-ng sentences when espeak-ng is installed, then distinct 10-15 s pieces of
   long_gates_ted.wav), over and over for --repeat x 15 s; speech end -> final as in 1,
   and how late the most belated stream's sending ran.
The table's "met?" judges NOW. Words are compared normalized (stt.evaluation.normalize_text).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

import stream_latency as sl  # puts the project root on sys.path
from stt.evaluation import normalize_text, word_errors  # noqa: E402
from turn_metrics import (  # noqa: E402
    energy_offset_ms, frame_levels, revised_words, sentence_ends, sentences_cut, spell_digits, stable_words_changed,
)

ROOT = sl.ROOT
JFK_OPENING = "and so my fellow americans"
# Sentence ends (normalized word counts) of references written without punctuation.
# The others are one sentence each (README: ps_austen_0870 "one long read sentence",
# ps_goforward "go forward ten meters").
SENTENCE_ENDS = {
    "s4_digits.wav": [5, 10, 15],  # README: "three digit strings separated by pauses", five digits each
    # README: "short phrases": three card names said one after the other, each complete on
    # its own ("eight of spades", "four of clubs", "seven of hearts").
    "ps_cards_005.wav": [3, 6, 9],
}
LOAD_FINAL_P95_TARGET_MS = {4: 1000, 12: 1500}
# Falling behind is a backlog that grows by the frame; the client's own scheduling
# jitter on a busy machine stays within a few 32 ms frames.
MAX_LAG_TARGET_MS = 100
LOAD_WINDOW_S = 15.0  # per --repeat: how long every load stream keeps playing
SAMPLES_PER_LEVEL_FRAME = sl.SAMPLE_RATE // 100


@dataclass
class Utterance:
    onset_ms: float | None = None  # voice_activity_detected's audio_offset_ms
    partials: list[tuple[float, dict]] = field(default_factory=list)  # (arrival, data)
    final: tuple[float, dict] | None = None


@dataclass
class Figures:
    """What one server did in the whole scenario (latencies in seconds)."""
    finals: list[float] = field(default_factory=list)
    first_partials: list[float] = field(default_factory=list)
    word_lags: list[float] = field(default_factory=list)
    stable_changed: int = 0
    revised: int = 0
    final_words: int = 0
    cuts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, tuple[int, int]] = field(default_factory=dict)  # clip: (errors, reference words)
    first_round: dict[str, list[str]] = field(default_factory=dict)  # clip: its finals' texts
    load_finals: dict[int, list[float]] = field(default_factory=dict)
    load_lag: dict[int, float] = field(default_factory=dict)


def utterances_of(result: sl.StreamResult) -> list[Utterance]:
    """The session's utterances in order, from the messages as they arrived."""
    by_id: dict[str, Utterance] = {}
    for arrival, message in result.messages:
        kind, data = message["type"], message.get("data", {})
        if kind not in ("voice_activity_detected", "transcription_partial", "transcription_final"):
            continue
        utterance = by_id.setdefault(data["utterance_id"], Utterance())
        if kind == "voice_activity_detected":
            utterance.onset_ms = data["audio_offset_ms"]
        elif kind == "transcription_partial":
            utterance.partials.append((arrival, data))
        else:
            utterance.final = (arrival, data)
    return list(by_id.values())


def speech_end_latencies(result: sl.StreamResult) -> list[float]:
    """Figure 1 for one play: each non-empty final's arrival - the sending of the frame
    holding the last speech sample of its audio."""
    latencies = []
    for utterance in utterances_of(result):
        if utterance.final is None or not utterance.final[1]["text"].strip():
            continue
        arrival, data = utterance.final
        end_ms = energy_offset_ms(result.recording.audio, data["start_ms"], data["end_ms"], sl.SAMPLE_RATE)
        if end_ms is not None:
            last_sample_ms = end_ms - 1000 / sl.SAMPLE_RATE
            latencies.append(arrival - sl.frame_sent_at(result.started_at, last_sample_ms))
    return latencies


def first_partial_latencies(result: sl.StreamResult) -> list[float]:
    """Figure 2 for one play."""
    latencies = []
    for utterance in utterances_of(result):
        if utterance.onset_ms is None or not utterance.partials:
            continue
        onset_ms = sl.energy_onset_ms(result.recording.audio, utterance.onset_ms)
        latencies.append(utterance.partials[0][0] - sl.frame_sent_at(result.started_at, onset_ms))
    return latencies


def score_play(figures: Figures, result: sl.StreamResult, first_round: bool) -> None:
    """Add one single-stream play of a clip to the figures."""
    recording = result.recording
    finals: list[str] = []
    for utterance in utterances_of(result):
        if utterance.final is None:
            continue
        final = normalize_text(utterance.final[1]["text"])
        partials = [data for _, data in utterance.partials]
        figures.stable_changed += stable_words_changed([normalize_text(p["stable_text"]) for p in partials], final)
        figures.revised += revised_words([normalize_text(p["text"]) for p in partials], final)
        figures.final_words += len(final)
        if final:
            finals.append(utterance.final[1]["text"].strip())
    figures.finals += speech_end_latencies(result)
    figures.first_partials += first_partial_latencies(result)
    figures.word_lags += result.word_lags
    reference = normalize_text(recording.reference)
    ends = SENTENCE_ENDS.get(recording.name) or sentence_ends(recording.reference)
    assert ends[-1] == len(reference), f"{recording.name}: sentence ends {ends} miss the clip's end"
    cuts = sentences_cut(reference, ends, [spell_digits(normalize_text(text)) for text in finals])
    figures.cuts[recording.name] = figures.cuts.get(recording.name, 0) + cuts
    errors, words = word_errors(recording.reference, " ".join(finals))
    before = figures.errors.get(recording.name, (0, 0))
    figures.errors[recording.name] = (before[0] + errors, before[1] + words)
    if first_round:
        figures.first_round[recording.name] = finals


def gates_pieces(audio: np.ndarray, count: int) -> list[sl.Recording]:
    """`count` consecutive, distinct pieces of the long talk, each ending at the quietest
    10 ms between 10 and 15 s after its start (so none starts or ends mid-word)."""
    levels = frame_levels(audio, sl.SAMPLE_RATE)
    pieces, start = [], 0  # in 10 ms frames
    while len(pieces) < count:
        if start + 1500 > levels.size:
            raise SystemExit("long_gates_ted.wav is too short for that many load streams")
        end = start + 1000 + int(np.argmin(levels[start + 1000:start + 1500]))
        piece = audio[start * SAMPLES_PER_LEVEL_FRAME:end * SAMPLES_PER_LEVEL_FRAME]
        pieces.append(sl.Recording(f"long_gates_ted.wav@{start / 100:.0f}s", piece, "", False))
        start = end
    return pieces


async def single_stream_rounds(url: str, clips: list[sl.Recording], repeat: int,
                               variants: Iterator[int]) -> list[list[sl.StreamResult]]:
    return [[await sl.stream_one(url, clip, next(variants)) for clip in clips] for _ in range(repeat)]


async def play_for(url: str, recording: sl.Recording, window_s: float,
                   variants: Iterator[int]) -> list[sl.StreamResult]:
    """Play `recording` over and over (a new session and gain each time) until `window_s` passed."""
    deadline = time.perf_counter() + window_s
    results = [await sl.stream_one(url, recording, next(variants))]
    while time.perf_counter() < deadline:
        results.append(await sl.stream_one(url, recording, next(variants)))
    return results


async def load_round(url: str, recordings: list[sl.Recording], window_s: float,
                     variants: Iterator[int]) -> list[sl.StreamResult]:
    series = await asyncio.gather(*[play_for(url, recording, window_s, variants) for recording in recordings])
    return [result for group in series for result in group]


def measure(url: str, clips: list[sl.Recording], load_recordings: list[sl.Recording], counts: list[int],
            repeat: int) -> Figures:
    """The whole scenario against one server."""
    figures, variants = Figures(), itertools.count(1)
    # One untimed play first: a server's first session pays one-off costs (first
    # inference, lazy imports) that no later turn does.
    asyncio.run(sl.stream_one(url, min(clips, key=lambda clip: clip.audio.size), next(variants)))
    for index, results in enumerate(asyncio.run(single_stream_rounds(url, clips, repeat, variants))):
        for result in results:
            score_play(figures, result, first_round=index == 0)
    for count in counts:
        print(f"  {count} concurrent streams ...", file=sys.stderr, flush=True)
        results = asyncio.run(load_round(url, load_recordings[:count], LOAD_WINDOW_S * repeat, variants))
        figures.load_finals[count] = [latency for result in results for latency in speech_end_latencies(result)]
        figures.load_lag[count] = max(result.lag_behind_real_time for result in results)
    return figures


def server_env(folder: Path) -> dict[str, str]:
    """A benchmark server's environment: embedded, with its files in `folder` (see above)."""
    shared = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "PROMETHEUS_MULTIPROC_DIR")
    env = {key: value for key, value in os.environ.items() if key not in shared}
    env.update(DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}", MEDIA_ROOT=str(folder / "media"),
               HISTORY_JOURNAL=str(folder / "history-journal.jsonl"), AUTH_REQUIRED="false",
               REFINE_FINALS="0", CAPACITY_ADMISSION="0", LOG_LEVEL="WARNING")
    return env


@contextlib.contextmanager
def local_server(root: Path, adjust: Callable[[dict[str, str]], dict[str, str]] | None = None) -> Iterator[str]:
    """A server of the tree at `root` on a fresh, migrated SQLite database; its URL.
    `adjust` changes its environment (server_env's) before it starts."""
    with local_server_process(root, adjust) as (_, url):
        yield url


@contextlib.contextmanager
def local_server_process(root: Path, adjust: Callable[[dict[str, str]], dict[str, str]] | None = None
                         ) -> Iterator[tuple[subprocess.Popen, str]]:
    """local_server's process and URL (for a benchmark that watches the process)."""
    with tempfile.TemporaryDirectory(prefix="turn-bench-server-") as folder:
        env, log = server_env(Path(folder)), Path(folder) / "server.log"
        if adjust is not None:
            env = adjust(env)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=root, env=env,
                       check=True)
        try:
            process, url = sl.start_server(root, env, log)
        except SystemExit:
            sys.stderr.write(log.read_text()[-4000:])
            raise
        try:
            yield process, url
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """REV in a temporary detached git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="turn-bench-rev-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), rev], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def offline_errors(clips: list[sl.Recording], model_name: str) -> dict[str, tuple[int, int]]:
    """Figure 7's yardstick: faster-whisper's own beam-5 transcribe() of each whole clip."""
    from faster_whisper import WhisperModel

    from stt.engine import resolve_model

    model = WhisperModel(resolve_model(model_name), device="cpu", compute_type="int8")
    errors = {}
    for clip in clips:
        segments, _ = model.transcribe(clip.audio, beam_size=5, language="en")
        errors[clip.name] = word_errors(clip.reference, " ".join(segment.text.strip() for segment in segments))
    return errors


def rate(errors: tuple[int, int]) -> float:
    return errors[0] / errors[1] if errors[1] else 0.0


def latency_row(label: str, value_ms: float | None, target_ms: float | None,
                strict: bool = False) -> tuple[str, str, str, bool | None]:
    met = None if value_ms is None or target_ms is None else (value_ms < target_ms if strict else value_ms <= target_ms)
    target = "-" if target_ms is None else f"{'<' if strict else '<='} {target_ms}"
    return label, target, sl.fmt(value_ms, 0), met


def figure_rows(figures: Figures, offline: dict[str, tuple[int, int]],
                counts: list[int]) -> list[tuple[str, str, str, bool | None]]:
    """(figure, target, value, met?) of one server, in the table's order."""
    q = sl.quantile_ms
    revisions = figures.revised / figures.final_words if figures.final_words else None
    cuts = sum(figures.cuts.values())
    within = sum(rate(figures.errors[name]) <= rate(offline[name]) for name in offline)
    jfk = figures.first_round.get("jfk.flac")
    opening = normalize_text(JFK_OPENING)
    jfk_ok = None if jfk is None else normalize_text(" ".join(jfk))[:len(opening)] == opening
    rows = [
        latency_row("speech end -> final p50 (ms)", q(figures.finals, 0.5), 350),
        latency_row("speech end -> final p95 (ms)", q(figures.finals, 0.95), 600),
        latency_row("speech onset -> first partial p50 (ms)", q(figures.first_partials, 0.5), 250),
        ("stable words changed", "0", str(figures.stable_changed), figures.stable_changed == 0),
        ("revisions per final word", "<= 0.25", "n/a" if revisions is None else f"{revisions:.2f}",
         None if revisions is None else revisions <= 0.25),
        latency_row("word lag p50 (ms)", q(figures.word_lags, 0.5), 300),
        ("sentences cut in two (all clips)", "0", str(cuts), cuts == 0),
        ("clips with streamed WER <= offline", f"{len(offline)}/{len(offline)}", f"{within}/{len(offline)}",
         within == len(offline)),
        ("jfk starts 'and so my fellow americans'", "yes", {None: "n/a", True: "yes", False: "no"}[jfk_ok], jfk_ok),
    ]
    for count in counts:
        rows.append(latency_row(f"{count} streams: speech end -> final p95 (ms)",
                                q(figures.load_finals[count], 0.95), LOAD_FINAL_P95_TARGET_MS.get(count)))
        rows.append(latency_row(f"{count} streams: max lag behind real time (ms)",
                                figures.load_lag[count] * 1000, MAX_LAG_TARGET_MS, strict=True))
    return rows


def print_report(before: Figures | None, now: Figures, offline: dict[str, tuple[int, int]], counts: list[int]) -> None:
    met_text = {None: "-", True: "yes", False: "NO"}
    columns = ["before", "now"] if before else ["now"]
    print(f"\n{'figure':42} | {'target':9} | " + " | ".join(f"{c:>7}" for c in columns) + " | met?")
    print("-" * (62 + 10 * len(columns)))
    before_rows = figure_rows(before, offline, counts) if before else None
    for index, (label, target, value, met) in enumerate(figure_rows(now, offline, counts)):
        values = ([before_rows[index][2]] if before_rows else []) + [value]
        print(f"{label:42} | {target:9} | " + " | ".join(f"{v:>7}" for v in values) + f" | {met_text[met]}")
    print(f"\n{'clip':20} | " + " | ".join(f"{'cuts ' + c:>11}" for c in columns) + " | "
          + " | ".join(f"{'WER ' + c:>10}" for c in columns) + " | WER offline | now <= offline")
    for name, offline_errors_of_clip in offline.items():
        cuts = [f"{figures.cuts[name]:>11}" for figures in (before, now) if figures]
        wers = [f"{rate(figures.errors[name]) * 100:>9.1f}%" for figures in (before, now) if figures]
        within = rate(now.errors[name]) <= rate(offline_errors_of_clip)
        print(f"{name:20} | " + " | ".join(cuts) + " | " + " | ".join(wers)
              + f" | {rate(offline_errors_of_clip) * 100:>10.1f}% | {met_text[within]}")
    for column, figures in zip(columns, [before, now] if before else [now]):
        print(f"\nstreamed finals of the first round, {column.upper()} (' | ' between finals):")
        for name, finals in figures.first_round.items():
            print(f"  {name}: {' | '.join(finals)}")


def describe_revision(rev: str) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    return git("log", "-1", "--format=%h %s", rev)[:72]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="WebSocket URL of a running server (default: start one from this tree)")
    parser.add_argument("--baseline-rev", help="git revision to measure first as BEFORE (not with --url)")
    parser.add_argument("--streams", default="4,12", help="comma-separated concurrent stream counts of the load rounds")
    parser.add_argument("--repeat", type=int, default=2, help="plays of each clip (load rounds: x 15 s)")
    parser.add_argument("--audio-dir", default=str(sl.AUDIO_DIR))
    parser.add_argument("--model", default="tiny.en", help="model of the offline yardstick (the server's STT_MODEL)")
    args = parser.parse_args()
    if args.url and args.baseline_rev:
        parser.error("--baseline-rev starts its own servers; it cannot be used with --url")
    counts = [int(count) for count in args.streams.split(",") if count]
    recordings = sl.load_recordings(Path(args.audio_dir), synthetic=True)
    clips = [recording for recording in recordings if not recording.synthetic]
    load_recordings = clips + [recording for recording in recordings if recording.synthetic]
    if max(counts, default=0) > len(load_recordings):
        from faster_whisper.audio import decode_audio

        talk = decode_audio(str(Path(args.audio_dir) / "long_gates_ted.wav"), sl.SAMPLE_RATE)
        load_recordings += gates_pieces(talk, max(counts) - len(load_recordings))

    def scenario(url: str, label: str) -> Figures:
        print(f"{label}: streaming to {url} ...", file=sys.stderr, flush=True)
        return measure(url, clips, load_recordings, counts, args.repeat)

    before = None
    if args.url:
        now = scenario(args.url, "NOW")
    else:
        if args.baseline_rev:
            with checkout(args.baseline_rev) as tree, local_server(tree) as url:
                before = scenario(url, f"BEFORE ({args.baseline_rev})")
        with local_server(ROOT) as url:
            now = scenario(url, "NOW")
    offline = offline_errors(clips, args.model)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"\nFasttalk STT turn latency: {len(clips)} clips x {args.repeat} at real-time pace, 1 stream; load rounds "
          f"{', '.join(map(str, counts))} streams x {LOAD_WINDOW_S * args.repeat:.0f} s")
    if before:
        print(f"BEFORE: {describe_revision(args.baseline_rev)}")
    print(f"NOW:    {args.url or describe_revision('HEAD') + (' + uncommitted changes' if dirty else '')}")
    print_report(before, now, offline, counts)


if __name__ == "__main__":
    main()
