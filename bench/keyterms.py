"""Keyterm prompting: how well names are recognised with and without keyterms, and that
the other words do not suffer. Streams through a real server at real-time pace.

    .venv/bin/python bench/keyterms.py                      # starts a local server itself
    .venv/bin/python bench/keyterms.py --url ws://host:8000/ws/transcribe --concurrency 1

Synthetic part: sentences with rare names of people, products and places, spoken by
espeak-ng (written with their reference texts to --save, default var/bench-keyterms).
All sentences stream in one session per condition, 1.2 s apart, 32 ms frames on the
client's clock:
  none        no keyterms
  names       every name of the set as session keyterms (a contact list, a catalogue)
  own         only the next sentence's names (configure before each sentence)
  unrelated   as many other names, none of which is spoken
For each: the name-word error rate and the other words' error rate of the finals (and
of the last partial of each utterance: it depends on when that partial was computed,
so on the machine's load), and the lag of each final behind the end of its speech.
Real part: the recordings of ../shared/audio with keyterms that they say, and with the
unrelated names; word error rate per recording; the same with VAD off (vad-off part).
Model part (in this process, no
service): each sentence decoded whole as a partial (beam 1) per condition, the decoding
time the names' prompt adds to a final, and noise decoded with no VAD to stop it, with
every name as the prompt: the name words that come out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")
sys.path.insert(0, str(ROOT / "bench"))

from stream_latency import AUDIO_DIR, JFK_TEXT, SAMPLE_RATE, start_server  # noqa: E402

from stt.evaluation import marked_word_errors, normalize_text, word_errors  # noqa: E402

FRAME = 512
GAP = 1.2  # seconds of silence between sentences
SENTENCES = [
    "Please send the invoice to [Siobhan Nakamura] before Friday.",
    "Our flight to [Reykjavik] leaves at noon.",
    "The new [Zyphora] headset ships next month.",
    "Ask [Oisin Brannigan] to review the contract.",
    "We deployed the service on [Kubernetes] last night.",
    "The meeting with [Anneliese Vandermolen] moved to Tuesday.",
    "She bought a [Quorvex] blender for the kitchen.",
    "The conference is in [Ouagadougou] this year.",
    "[Thibault Marchetti] will present the results.",
    "Install the [Nextavia] app on your phone.",
    "The train stops at [Llandudno] and then returns.",
    "Call [Pradeep Raghunathan] about the delivery.",
    "Our office in [Tegucigalpa] opens on Monday.",
    "The [Velocaster] bike has a lighter frame.",
    "[Ngozi Okonkwo] joined the board last week.",
    "Try the [Lumetric] dashboard for the weekly numbers.",
    "We hiked near [Chamonix] during the summer.",
    "[Xiomara Castellanos] approved the budget yesterday.",
    "The [Brightwell Orbis] printer is out of paper.",
    "Book a hotel in [Szczecin] for the workshop.",
    "[Dmitri Volkonsky] wrote the first chapter.",
    "Reset the [Sonaviq] router and try again.",
    "The ferry to [Tobermory] was cancelled.",
    "Tell [Eilidh Fairbairn] that the samples arrived.",
]
UNRELATED = ["Aurelio Bastiani", "Kirkcudbright", "Trondheim", "Veltrano", "Wojciech Zielinski", "Omnistrada",
             "Bartholomew Quist", "Penzance", "Ferrovia Nueva", "Haruki Tanabe", "Grindelwald", "Lysander Holt",
             "Qadira Mensah", "Zanzibar", "Corvantis", "Mireille Dufresne", "Hallstatt", "Tiberius Crane",
             "Nuvolari", "Sigrid Aalto", "Brisbane", "Castellucci", "Esperanza Ruiz", "Ulaanbaatar"]
# The real recordings and words they say that are worth a keyterm.
REAL = {"jfk.flac": ["Americans"], "ps_austen_0870.wav": ["John Dashwood", "prudently"],
        "fw_libri_61_left.wav": ["wizard", "curtain"], "pv_platforms.wav": ["platforms"],
        "ps_cards_005.wav": ["spades", "clubs", "hearts"], "ps_goforward.wav": ["meters"],
        "s4_digits.wav": ["oh", "zero"]}


def names_of(sentence: str) -> list[str]:
    return re.findall(r"\[(.*?)\]", sentence)


def plain(sentence: str) -> str:
    return sentence.replace("[", "").replace("]", "")


def synthesize(save: Path) -> list[np.ndarray]:
    """Each sentence spoken by espeak-ng, kept under `save` as NAME.wav beside NAME.txt."""
    from faster_whisper.audio import decode_audio

    save.mkdir(parents=True, exist_ok=True)
    clips = []
    for index, sentence in enumerate(SENTENCES):
        wav, txt = save / f"sentence_{index:02d}.wav", save / f"sentence_{index:02d}.txt"
        txt.write_text(sentence + "\n")  # the reference, names in [brackets]
        if not wav.exists():
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), plain(sentence)], check=True)
        clips.append(decode_audio(str(wav), sampling_rate=SAMPLE_RATE))
    return clips


@dataclass
class Session:
    finals: list[tuple[int, str]] = field(default_factory=list)  # (start_ms, text)
    last_partials: dict[str, str] = field(default_factory=dict)  # utterance -> its last partial
    final_lags: list[float] = field(default_factory=list)  # last word's audio sent -> the final
    clip_starts_ms: list[int] = field(default_factory=list)  # each clip on the session timeline

    def text(self) -> str:
        return " ".join(text for _, text in self.finals)

    def text_of_clip(self, index: int) -> str:
        """The finals that start within clip `index` (or the gap after it)."""
        bounds = [*self.clip_starts_ms, 1 << 62]
        return " ".join(text for start, text in self.finals if bounds[index] <= start + 200 < bounds[index + 1])


async def stream_session(url: str, clips: list[np.ndarray], keyterms: list[str] | list[list[str]],
                         gain: float, enable_vad: bool = True) -> Session:
    """The clips in one session at real-time pace, GAP apart; `keyterms` is one list for
    the session or one per clip (sent with configure just before the clip)."""
    per_clip = bool(keyterms) and isinstance(keyterms[0], list)
    result = Session()
    async with websockets.connect(url, max_size=None) as ws:
        config = {"language": "en", "keyterms": [] if per_clip else keyterms, "enable_vad": enable_vad}
        await ws.send(json.dumps({"type": "start_session", "session_config": config}))
        started = json.loads(await ws.recv())
        assert started["type"] == "session_started", started
        t0 = time.perf_counter()

        async def reader() -> None:
            async for raw in ws:
                message, now = json.loads(raw), time.perf_counter()
                data = message.get("data", {})
                if message["type"] == "transcription_partial":
                    result.last_partials[data["utterance_id"]] = data["text"]
                elif message["type"] == "transcription_final" and data["text"]:
                    result.finals.append((data["start_ms"], data["text"]))
                    if data["timestamps"]:
                        spoken = t0 + (data["start_ms"] + data["timestamps"][-1]["end_ms"]) / 1000
                        result.final_lags.append(now - spoken)
                elif message["type"] == "error":
                    print("  server error:", message["error"]["message"], file=sys.stderr)

        reading = asyncio.create_task(reader())
        sent = 0
        for index, clip in enumerate(clips):
            if per_clip:
                await ws.send(json.dumps({"type": "configure", "config": {"keyterms": keyterms[index]}}))
            result.clip_starts_ms.append(sent * 1000 // SAMPLE_RATE)
            audio = np.concatenate([clip * np.float32(gain), np.zeros(int(GAP * SAMPLE_RATE), np.float32)])
            for start in range(0, audio.size, FRAME):
                await ws.send(audio[start:start + FRAME].astype("<f4").tobytes())
                sent += min(FRAME, audio.size - start)
                delay = t0 + sent / SAMPLE_RATE - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "end_session"}))
        await asyncio.wait_for(reading, 120)
    return result


async def stream_conditions(url: str, clips: list[np.ndarray], conditions: dict, concurrency: int,
                            what: str, enable_vad: bool = True) -> dict[str, Session]:
    """One session per condition, `concurrency` of them at a time (each with its own tiny
    gain: identical audio would be answered from the server's result cache)."""
    results: dict[str, Session] = {}
    names = list(conditions)
    for first in range(0, len(names), concurrency):
        batch = names[first:first + concurrency]
        print(f"streaming {what} ({sum(c.size for c in clips) / SAMPLE_RATE:.0f} s of audio) for: "
              f"{', '.join(batch)}", file=sys.stderr)
        done = await asyncio.gather(*(stream_session(url, clips, conditions[name], 1.0 - 1e-4 * (first + i),
                                                     enable_vad) for i, name in enumerate(batch)))
        results.update(zip(batch, done))
    return results


def unsaid(terms, reference: str, text: str) -> int:
    """Words of the keyterms in `text` that `reference` does not say: keyterms invented."""
    term_words = {w for term in terms for w in normalize_text(term)}
    said = set(normalize_text(reference))
    return sum(1 for word in normalize_text(text) if word in term_words and word not in said)


def flat(terms) -> list[str]:
    return [t for item in terms for t in (item if isinstance(item, list) else [item])]


def rates(reference: str, text: str) -> tuple[float, float]:
    errors = marked_word_errors(reference, text)
    (name_errors, names), (other_errors, others) = errors["marked"], errors["other"]
    return name_errors / names, other_errors / others


def quantile(values: list[float], q: float) -> str:
    return f"{np.quantile(values, q) * 1000:.0f}" if values else "-"


async def synthetic_part(url: str, save: Path, concurrency: int) -> None:
    clips = synthesize(save)
    every_name = [name for sentence in SENTENCES for name in names_of(sentence)]
    conditions = {"none": [], "names": every_name, "own": [names_of(s) for s in SENTENCES],
                  "unrelated": UNRELATED}
    reference = " ".join(SENTENCES)
    results = await stream_conditions(url, clips, conditions, concurrency, f"{len(clips)} sentences")
    name_words = sum(len(normalize_text(n)) for n in every_name)
    other_words = sum(len(normalize_text(plain(s))) for s in SENTENCES) - name_words
    print(f"\nSynthetic: {len(SENTENCES)} sentences, {name_words} name words, {other_words} other words "
          f"(espeak-ng; references in {save})\n")
    print("| keyterms | name-word error, finals | other words, finals | keyterm words not said, finals "
          "| name-word error, last partials | other words, last partials | keyterm words not said, partials "
          "| final lag p50 / p95 (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, session in results.items():
        partials = " ".join(session.last_partials.values())
        final_names, final_other = rates(reference, session.text())
        partial_names, partial_other = rates(reference, partials)
        terms = flat(conditions[name])
        print(f"| {name} | {final_names:.1%} | {final_other:.1%} | {unsaid(terms, reference, session.text())} "
              f"| {partial_names:.1%} | {partial_other:.1%} | {unsaid(terms, reference, partials)} "
              f"| {quantile(session.final_lags, 0.5)} / {quantile(session.final_lags, 0.95)} |")
    for name, session in results.items():
        missed = [n for n in every_name if n.lower() not in session.text().lower()]
        print(f"\n{name}: {len(every_name) - len(missed)}/{len(every_name)} names spelled right in the finals"
              + (f"; missed: {', '.join(missed)}" if missed else ""))


async def real_part(url: str, concurrency: int, enable_vad: bool = True) -> None:
    from faster_whisper.audio import decode_audio

    clips = [decode_audio(str(AUDIO_DIR / name), sampling_rate=SAMPLE_RATE) for name in REAL]
    references = [JFK_TEXT if name == "jfk.flac" else (AUDIO_DIR / f"{Path(name).stem}.txt").read_text().strip()
                  for name in REAL]
    conditions = {"none": [[] for _ in REAL], "said": list(REAL.values()), "unrelated": [UNRELATED for _ in REAL]}
    sessions = await stream_conditions(url, clips, conditions, concurrency, f"{len(clips)} real recordings",
                                       enable_vad)
    print(f"\nReal recordings{'' if enable_vad else ', VAD off (a final every 2 s)'}, word error rate of the "
          "finals (keyterms said: "
          + "; ".join(f"{Path(n).stem}: {', '.join(t)}" for n, t in REAL.items()) + ")\n")
    print("| recording | none | keyterms said in it | 24 unrelated names |")
    print("| --- | --- | --- | --- |")
    totals = {name: [0, 0] for name in conditions}
    invented = {name: 0 for name in conditions}
    for index, recording in enumerate(REAL):
        cells = []
        for condition, session in sessions.items():
            errors, words = word_errors(references[index], session.text_of_clip(index))
            totals[condition][0] += errors
            totals[condition][1] += words
            invented[condition] += unsaid(conditions[condition][index], references[index],
                                          session.text_of_clip(index))
            cells.append(f"{errors / words:.1%}")
        print(f"| {Path(recording).stem} | {' | '.join(cells)} |")
    print(f"| all | {' | '.join(f'{e / n:.1%}' for e, n in totals.values())} |")
    print(f"| keyterm words not said | {' | '.join(str(n) for n in invented.values())} |")


@dataclass
class _Job:
    """What decode_batch needs of a job."""

    audio: np.ndarray
    options: object

    @property
    def kind(self):
        return self.options.kind


class InProcessModel:
    """tiny.en in this process, decoding one job at a time (no service, no VAD)."""

    def __init__(self) -> None:
        from faster_whisper.tokenizer import Tokenizer

        from stt.engine import resolve_model, token_counter
        from stt.engine.loading import create_model

        self.model = create_model(resolve_model("tiny.en"), "cpu", "int8", 0, 1)
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, False)
        self.count = token_counter(self.tokenizer)

    def decode(self, audio: np.ndarray, options) -> object:
        from stt.engine.decoding import decode_batch

        return decode_batch(self.model, self.tokenizer, [_Job(audio, options)], False)[0]

    def prompt(self, terms: list[str]) -> str:
        from stt.engine import compose_prompt

        return compose_prompt(terms, count_tokens=self.count).text


def model_part(save: Path) -> None:
    """Partials (beam 1) over each whole sentence, the decoding time a prompt adds to a
    final, and noise with no VAD to stop it."""
    from stt.engine import DecodeOptions

    model = InProcessModel()
    every_name = [name for sentence in SENTENCES for name in names_of(sentence)]
    clips = synthesize(save)
    print("\nPartials in this process: beam 1, no word times, each whole sentence\n")
    print("| keyterms | name-word error | other words | keyterm words not said |")
    print("| --- | --- | --- | --- |")
    conditions = {"none": (lambda _: [], []), "names": (lambda _: every_name, every_name),
                  "own": (names_of, every_name), "unrelated": (lambda _: UNRELATED, UNRELATED)}
    reference = " ".join(SENTENCES)
    for name, (terms_of, terms) in conditions.items():
        text = " ".join(model.decode(clip, DecodeOptions.partial("en", prompt=model.prompt(terms_of(s)))).text
                        for clip, s in zip(clips, SENTENCES))
        names_rate, other_rate = rates(reference, text)
        print(f"| {name} | {names_rate:.1%} | {other_rate:.1%} | {unsaid(terms, reference, text)} |")
    decoding_cost(model, clips, model.prompt(every_name))
    noise_without_vad(model, every_name)


def decoding_cost(model: InProcessModel, clips: list[np.ndarray], prompt: str) -> None:
    from stt.engine import DecodeOptions

    times: dict[str, list[float]] = {"none": [], "names": []}
    for _ in range(2):
        for clip in clips:  # interleaved, so the machine's load falls on both alike
            for name, text in (("none", ""), ("names", prompt)):
                started = time.perf_counter()
                model.decode(clip, DecodeOptions.final("en", True, prompt=text))
                times[name].append(time.perf_counter() - started)
    print(f"\nDecoding time of a final (beam 5, word times), median of {len(times['none'])}: "
          f"{np.median(times['none']) * 1000:.0f} ms without a prompt, {np.median(times['names']) * 1000:.0f} ms "
          f"with every name ({model.count(prompt)} tokens)")


def noise_without_vad(model: InProcessModel, terms: list[str]) -> None:
    from dataclasses import replace

    from stt.engine import DecodeOptions

    prompt = model.prompt(terms)
    rng = np.random.default_rng(0)
    seconds = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    brown = np.cumsum(rng.standard_normal(seconds.size))
    brown = (brown - np.convolve(brown, np.ones(1600) / 1600, "same")) / np.abs(brown).max()
    noises = {"white": rng.standard_normal(seconds.size), "brown": brown,
              "hum": sum(np.sin(2 * np.pi * 50 * k * seconds) / k for k in range(1, 6)) / 2,
              "clicks": np.where(rng.random(seconds.size) < 0.001, 1.0, 0.0)}
    term_words = {w for term in terms for w in normalize_text(term)}
    print("\nNoise decoded without VAD, every name as the prompt (3 s each, at -50, -30 and -15 dBFS; "
          "a final and a partial of each)\n")
    print("| noise | texts without prompt | texts with prompt | name words that came out |")
    print("| --- | --- | --- | --- |")
    for name, noise in noises.items():
        texts = {False: 0, True: 0}
        leaked: set[str] = set()
        for level in (-50, -30, -15):
            audio = (noise / np.abs(noise).max() * 10 ** (level / 20)).astype(np.float32)
            for options in (DecodeOptions.final("en", True), DecodeOptions.partial("en")):
                for prompted in (False, True):
                    decoded = model.decode(audio, replace(options, prompt=prompt if prompted else ""))
                    texts[prompted] += bool(decoded.text)
                    if prompted:
                        leaked |= term_words & set(normalize_text(decoded.text))
        print(f"| {name} | {texts[False]}/6 | {texts[True]}/6 | {', '.join(sorted(leaked)) or 'none'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--concurrency", type=int, default=2, help="conditions streamed at once")
    parser.add_argument("--save", type=Path, default=ROOT / "var" / "bench-keyterms")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: synthetic,real,vad-off,model")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    server = None
    url = args.url
    if url is None and not {"synthetic", "real", "vad-off"} <= skip:
        server, url = start_server()
    try:
        if "synthetic" not in skip:
            asyncio.run(synthetic_part(url, args.save, max(1, args.concurrency)))
        if "real" not in skip:
            asyncio.run(real_part(url, max(1, args.concurrency)))
        if "vad-off" not in skip:
            asyncio.run(real_part(url, max(1, args.concurrency), enable_vad=False))
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
    if "model" not in skip:
        import django

        django.setup()
        model_part(args.save)


if __name__ == "__main__":
    main()
