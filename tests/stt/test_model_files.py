"""The bundled Whisper base model: two packages' parts joined, checked, put in place once."""

from __future__ import annotations

import hashlib

import pytest

from stt import model_files
from stt.engine import resolve_model
from stt.model_files import BASE_MODEL_SHA256, ModelIntegrityError, bundled_base_model


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def test_the_parts_are_joined_into_a_verified_model_directory(tmp_path):
    directory = bundled_base_model(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "model.bin", "model.sha256", "tokenizer.json", "vocabulary.json"]
    assert sha256(directory / "model.bin") == BASE_MODEL_SHA256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".whisper-base-")], "no staging left"


def test_a_joined_model_is_reused_not_joined_again(tmp_path):
    first = bundled_base_model(tmp_path)
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert bundled_base_model(tmp_path) == first
    assert (first / "model.bin").stat().st_mtime_ns == stamp


def test_a_join_that_does_not_match_the_known_digest_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "BASE_MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelIntegrityError, match="expected 0000"):
        bundled_base_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".whisper-base.lock"], "nothing half-made is left"


def test_base_is_a_model_name_the_engine_resolves(settings, tmp_path):
    settings.MODEL_CACHE_DIR = str(tmp_path)
    assert resolve_model("base") == str(bundled_base_model(tmp_path))
