"""The model names the API answers to: the loaded model's own name and its aliases.

Every name is served by the process's one model (STT_MODEL). Clients written for
OpenAI send `whisper-1`, a gpt-4o transcription model, `gpt-transcribe` (Pipecat's
default) or `gpt-realtime-whisper` (LiveKit's realtime path): they work unchanged, and
get this server's model, whatever the name says. A dated snapshot of a known name
(`gpt-4o-mini-transcribe-2025-12-15`) is that name. A diarizing model
(`gpt-4o-transcribe-diarize`) is refused with its own error: this server does not tell
speakers apart, and a client asking for it must not get a transcript without them as
if it had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

# OpenAI's dated snapshots: a known name followed by -YYYY-MM-DD.
SNAPSHOT = re.compile(r"^(?P<name>.+)-\d{4}-\d{2}-\d{2}$")
DIARIZE = re.compile(r"-diarize(-\d{4}-\d{2}-\d{2})?$")

OWNER = "fasttalk"


@dataclass(frozen=True)
class ModelCatalog:
    model: str  # the loaded model's id: STT_MODEL, or a model directory's name
    aliases: tuple[str, ...]
    created: int  # Unix time the server started (OpenAI's `created`)

    @classmethod
    def from_settings(cls, stt_model: str, aliases: list[str], created: int) -> "ModelCatalog":
        name = PurePath(stt_model).name if "/" in stt_model else stt_model
        return cls(name, tuple(a for a in aliases if a != name), created)

    @property
    def ids(self) -> tuple[str, ...]:
        return (self.model, *self.aliases)

    def knows(self, name: str) -> bool:
        """A name this server answers to: one of `ids`, or a dated snapshot of one."""
        if name in self.ids:
            return True
        snapshot = SNAPSHOT.match(name)
        return snapshot is not None and snapshot["name"] in self.ids

    @staticmethod
    def diarizes(name: str) -> bool:
        """A diarizing model's name, which this server refuses (it has no diarisation)."""
        return DIARIZE.search(name) is not None

    def refusal(self, name: str) -> tuple[str, str] | None:
        """(code, message) refusing `name`, or None when this server answers to it."""
        if self.diarizes(name):
            return ("diarization_not_supported",
                    f"{name!r} diarizes: this server does not tell speakers apart; use one of {', '.join(self.ids)}")
        if not self.knows(name):
            return "model_not_found", f"the model {name!r} does not exist; this server has {', '.join(self.ids)}"
        return None

    def entry(self, name: str) -> dict:
        """OpenAI's model object."""
        return {"id": name, "object": "model", "created": self.created, "owned_by": OWNER}

    def listing(self) -> dict:
        return {"object": "list", "data": [self.entry(name) for name in self.ids]}
