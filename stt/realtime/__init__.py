"""OpenAI-compatible realtime transcription sessions (`/v1/realtime?intent=transcription`),
built on the same session and streaming core as /ws/transcribe:

- events.py: the client events, parsed and validated (beta and GA names)
- config.py: the session's settings in OpenAI's terms, mapped onto the session config
- audio.py: base64 pcm16 at 24 kHz -> 16 kHz float32
- translator.py: the session's messages -> OpenAI server events
- session.py: RealtimeSession, the adapter between the two
- consumer.py: the thin Channels consumer

docs/protocol.md, *OpenAI-compatible realtime transcription*, is the prose form.
"""

from stt.realtime.session import BETA, GA, RealtimeSession

__all__ = ["BETA", "GA", "RealtimeSession"]
