"""A realtime transcription session's settings, in OpenAI's terms, and their mapping onto
the session config of /ws/transcribe (stt/protocol.py SessionConfig) and the session's
VAD tuning.

| OpenAI | here |
| --- | --- |
| `turn_detection` `server_vad` | `enable_vad: true` (silero-vad), `endpointing: "off"`: a fixed end silence |
| `turn_detection` `semantic_vad` | `enable_vad: true`, `endpointing` its `eagerness`: `low`, `medium`, `high`, or `auto` (the default) = null, the runtime profile's |
| `turn_detection: null` | `enable_vad: false`: the client commits; a buffer reaching `MANUAL_COMMIT_SECONDS` is committed by the server |
| `silence_duration_ms` (`server_vad`) | `final_chunk_duration` (100 ms to `MAX_SILENCE_DURATION`) |
| `threshold` (`server_vad`) | the session's VAD threshold (default `VAD_THRESHOLD`) |
| `prefix_padding_ms` (`server_vad`) | the session's speech padding (default `VAD_SPEECH_PAD_MS`, at most 1000) |
| `input_audio_transcription.language` | `language` |
| `input_audio_transcription.prompt` | `prompt` (null: `""`, none): read as the text before the audio, its latest words that fit before the keyterms |

(GA: `audio.input.transcription.*`.) A `turn_detection` without `type` keeps the current
one. Each type takes only its own settings (the other's are refused): `semantic_vad` runs
with the VAD values `server_vad` last had, and its end silence follows its eagerness.

Sessions report their effective settings: the model is the server's, the prompt as the
session keeps it (whitespace tidied), and what is accepted but not applied (keywords,
noise reduction, logprobs) shows as its effective value (null).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stt.errors import SttError
from stt.openai_api.catalog import ModelCatalog
from stt.realtime.events import BetaSession, GaSession, TranscriptionOptions, TurnDetection

INPUT_SAMPLE_RATE = 24000
# With turn_detection null, audio up to this long waits for the client's commit (30 s
# is also the longest audio Whisper transcribes in one piece); longer is committed.
MANUAL_COMMIT_SECONDS = 30.0


@dataclass(frozen=True)
class ServerVad:
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms}


@dataclass(frozen=True)
class RealtimeConfig:
    """What a transcription session runs with. `vad` and `semantic_eagerness` keep their
    values while turn detection is off, so that turning it back on restores them."""

    model: str
    language: str | None
    turn_detection: bool
    vad: ServerVad
    # semantic_vad's eagerness (low, medium, high, auto); None: server_vad.
    semantic_eagerness: str | None = None
    prompt: str = ""

    def fasttalk_config(self) -> dict[str, Any]:
        """The /ws/transcribe session config keys this session sets."""
        if self.semantic_eagerness is None:
            endpointing: str | None = "off"
        else:  # auto: null, the runtime profile's eagerness
            endpointing = None if self.semantic_eagerness == "auto" else self.semantic_eagerness
        return {"language": self.language, "enable_vad": self.turn_detection,
                "final_chunk_duration": self.vad.silence_duration_ms / 1000, "endpointing": endpointing,
                "prompt": self.prompt}

    def turn_detection_object(self) -> dict[str, Any] | None:
        """`turn_detection` as the session object shows it."""
        if not self.turn_detection:
            return None
        if self.semantic_eagerness is not None:
            return {"type": "semantic_vad", "eagerness": self.semantic_eagerness}
        return self.vad.as_dict()

    def beta_session(self, session_id: str, expires_at: int) -> dict[str, Any]:
        """As `transcription_session.created` / `.updated` carry it."""
        return {
            "id": session_id, "object": "realtime.transcription_session", "expires_at": expires_at,
            "input_audio_format": "pcm16",
            "input_audio_transcription": self._transcription(),
            "turn_detection": self.turn_detection_object(),
            "input_audio_noise_reduction": None,
            "include": None,
        }

    def ga_session(self, session_id: str, expires_at: int) -> dict[str, Any]:
        """As `session.created` / `session.updated` carry it (a session of type transcription)."""
        return {
            "type": "transcription", "object": "realtime.transcription_session", "id": session_id,
            "expires_at": expires_at,
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": INPUT_SAMPLE_RATE},
                "transcription": self._transcription(),
                "noise_reduction": None,
                "turn_detection": self.turn_detection_object(),
            }},
            "include": None,
        }

    def _transcription(self) -> dict[str, Any]:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}


@dataclass(frozen=True)
class UpdateParams:
    """Where the fields of one update event live, for errors (`param`)."""

    transcription: str
    turn_detection: str

    @classmethod
    def beta(cls) -> "UpdateParams":
        return cls("session.input_audio_transcription", "session.turn_detection")

    @classmethod
    def ga(cls) -> "UpdateParams":
        return cls("session.audio.input.transcription", "session.audio.input.turn_detection")

    def by_fasttalk_field(self) -> dict[str, str]:
        return {"language": f"{self.transcription}.language", "prompt": f"{self.transcription}.prompt",
                "enable_vad": self.turn_detection,
                "final_chunk_duration": f"{self.turn_detection}.silence_duration_ms",
                "endpointing": f"{self.turn_detection}.eagerness"}


def updated_config(current: RealtimeConfig, session: BetaSession | GaSession,
                   max_silence_ms: int, models: ModelCatalog | None = None) -> RealtimeConfig:
    """The config after an update event's session (fields it leaves out keep their
    value), or SttError naming the offending field; nothing is applied on error.
    `models`: the names a transcription model may be asked by (None: any)."""
    if isinstance(session, BetaSession):
        params = UpdateParams.beta()
        if session.input_audio_format not in (None, "pcm16"):
            raise SttError("invalid_config", "only pcm16 audio (24 kHz, mono, little-endian) is accepted",
                           field="session.input_audio_format")
        fields = session.model_fields_set
        transcription, turn = session.input_audio_transcription, session.turn_detection
        has_transcription, has_turn = "input_audio_transcription" in fields, "turn_detection" in fields
    else:
        params = UpdateParams.ga()
        audio_input = session.audio.input if session.audio is not None else None
        _check_ga_format(audio_input.format if audio_input is not None else None)
        fields = audio_input.model_fields_set if audio_input is not None else set()
        transcription = audio_input.transcription if audio_input is not None else None
        turn = audio_input.turn_detection if audio_input is not None else None
        has_transcription, has_turn = "transcription" in fields, "turn_detection" in fields
    config = current
    if has_transcription:
        config = _with_transcription(config, transcription, params, models)
    if has_turn:
        config = _with_turn_detection(config, turn, params, max_silence_ms)
    return config


def _check_ga_format(audio_format: Any) -> None:
    if audio_format is None:
        return
    if audio_format.type not in (None, "audio/pcm"):
        raise SttError("invalid_config", "only audio/pcm (24 kHz, mono, 16-bit little-endian) is accepted",
                       field="session.audio.input.format.type")
    if audio_format.rate not in (None, INPUT_SAMPLE_RATE):
        raise SttError("invalid_config", f"audio/pcm is taken at {INPUT_SAMPLE_RATE} Hz only",
                       field="session.audio.input.format.rate")


def _with_transcription(config: RealtimeConfig, options: TranscriptionOptions | None,
                        params: UpdateParams, models: ModelCatalog | None) -> RealtimeConfig:
    if options is None:
        raise SttError("invalid_config", "a transcription session always transcribes: the transcription "
                       "settings cannot be null", field=params.transcription)
    refused = models.refusal(options.model) if models is not None and options.model else None
    if refused is not None:  # as the file API refuses it (its code there is in the message's place here)
        raise SttError("invalid_config", refused[1], field=f"{params.transcription}.model")
    if "language" in options.model_fields_set:
        config = replace(config, language=options.language)
    if "prompt" in options.model_fields_set:  # checked as the session's prompt when applied
        config = replace(config, prompt=options.prompt or "")
    return config


def _with_turn_detection(config: RealtimeConfig, turn: TurnDetection | None, params: UpdateParams,
                         max_silence_ms: int) -> RealtimeConfig:
    if turn is None:
        return replace(config, turn_detection=False)
    semantic = turn.type == "semantic_vad" or (turn.type is None and config.semantic_eagerness is not None)
    _check_turn_fields(turn, semantic, params)
    if semantic:
        eagerness = turn.eagerness or config.semantic_eagerness or "auto"
        return replace(config, turn_detection=True, semantic_eagerness=eagerness)
    silence = turn.silence_duration_ms
    if silence is not None and silence > max_silence_ms:
        raise SttError("invalid_config", f"silence_duration_ms may be at most {max_silence_ms} on this server",
                       field=f"{params.turn_detection}.silence_duration_ms")
    vad = config.vad
    vad = ServerVad(
        threshold=turn.threshold if turn.threshold is not None else vad.threshold,
        prefix_padding_ms=turn.prefix_padding_ms if turn.prefix_padding_ms is not None else vad.prefix_padding_ms,
        silence_duration_ms=silence if silence is not None else vad.silence_duration_ms,
    )
    return replace(config, turn_detection=True, vad=vad, semantic_eagerness=None)


def _check_turn_fields(turn: TurnDetection, semantic: bool, params: UpdateParams) -> None:
    """Each type of turn detection takes its own settings only: silently dropping the
    other's would leave a client believing they apply."""
    foreign = ("threshold", "prefix_padding_ms", "silence_duration_ms") if semantic else ("eagerness",)
    for name in foreign:
        if getattr(turn, name) is not None:
            kind, other = ("semantic_vad", "server_vad") if semantic else ("server_vad", "semantic_vad")
            raise SttError("invalid_config", f"{name} is a {other} setting; {kind} does not take it",
                           field=f"{params.turn_detection}.{name}")
