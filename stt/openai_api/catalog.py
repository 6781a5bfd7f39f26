"""The model names the API answers to: the loaded model's own name and its aliases.

Every name is served by the process's one model (STT_MODEL). Clients written for
OpenAI send `whisper-1` (or a gpt-4o transcription model): they work unchanged, and
get this server's model, whatever the name says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

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
        return name in self.ids

    def entry(self, name: str) -> dict:
        """OpenAI's model object."""
        return {"id": name, "object": "model", "created": self.created, "owned_by": OWNER}

    def listing(self) -> dict:
        return {"object": "list", "data": [self.entry(name) for name in self.ids]}
