"""The inference engine: one speech model per process, shared by every session.

  get_engine()                          the process's engine (built from settings once)
  await engine.ready()                  load the model (once, in a thread)
  await engine.transcribe(audio, opts)  queue an inference, get a Transcript
  engine.prefetch(audio, opts)          start an inference whose result may be asked for soon
  engine.cancel_stream(key)             drop a stream's queued work (barge-in)

How it is fast on a small CPU: short encoder windows and token caps (decoding.py),
one priority queue with finals first, batches, and a result cache (scheduler.py).

  types.py          what it takes and gives (DecodeOptions, Transcript, EngineInfo...)
  prompt.py         the decoder prompt from keyterms and context, within a token budget
  loading.py        which model, on which device; loading it; the CPU stand-in copy
  decoding.py       pure decode functions: windows, token caps, loop trimming, words
  numbers.py        digit strings written digit by digit in every text, word and piece
  jobs.py           a queued job, the result cache, the batch limit, admissions
  scheduler.py      the queue, batching, joins, worker threads, the breaker's verdicts
  load.py           the engine's own load: finals p95, decode time per second (admission)
  gpu.py            out-of-memory halving and the CPU fallback behind the GPU breaker
  breaker.py        the circuit breaker
  speech_engine.py  SpeechEngine, which puts these together
  holder.py         the process's engine, built from Django settings
"""

from stt.engine.decoding import is_doubled, trim_repetition, window_seconds
from stt.engine.holder import build_engine_from_settings, get_engine, replace_engine
from stt.engine.loading import BUNDLED_MODELS, pick_device, resolve_model
from stt.engine.prompt import (
    MAX_KEYTERM_CHARS,
    MAX_KEYTERMS,
    ComposedPrompt,
    compose_prompt,
    merge_keyterms,
    token_counter,
)
from stt.engine.speech_engine import SpeechEngine
from stt.engine.types import (
    AudioSource,
    DecodeOptions,
    EngineInfo,
    EngineStats,
    JobKind,
    Piece,
    Superseded,
    Transcript,
    Word,
)

__all__ = [
    "AudioSource", "BUNDLED_MODELS", "ComposedPrompt", "DecodeOptions", "EngineInfo", "EngineStats", "JobKind",
    "MAX_KEYTERMS", "MAX_KEYTERM_CHARS", "Piece", "SpeechEngine", "Superseded", "Transcript", "Word",
    "build_engine_from_settings", "compose_prompt", "get_engine", "is_doubled", "merge_keyterms", "pick_device",
    "replace_engine", "resolve_model", "token_counter", "trim_repetition", "window_seconds",
]
