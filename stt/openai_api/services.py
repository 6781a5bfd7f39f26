"""What the file API works with, passed in: the transcriber (engine, history) and the
model catalog. stt/services.py builds the process's."""

from __future__ import annotations

from dataclasses import dataclass

from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.transcriber import FileTranscriber


@dataclass(frozen=True)
class FileApiServices:
    transcriber: FileTranscriber
    catalog: ModelCatalog
