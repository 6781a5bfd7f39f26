"""What the file API works with, passed in: the transcriber (engine, history), the model
catalog, the process's uploads (admission, the file pool, the drain) and the decoder.
stt/services.py builds the process's."""

from __future__ import annotations

from dataclasses import dataclass, field

from stt.openai_api.catalog import ModelCatalog
from stt.openai_api.transcriber import FileTranscriber
from stt.openai_api.uploads import Uploads, process_uploads
from stt.openai_api.work import Decoder, decode_upload


@dataclass(frozen=True)
class FileApiServices:
    transcriber: FileTranscriber
    catalog: ModelCatalog
    uploads: Uploads = field(default_factory=process_uploads)
    decoder: Decoder = decode_upload
