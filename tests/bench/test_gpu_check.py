"""bench/gpu_check.sh --dry-run: the GPU check's every step (decode times, a server under
the performance tester, the fault paths of bench/gpu_faults.py) on the CPU with tiny
shapes, so that a broken import or a renamed API fails here, not on a rented GPU.
The dry run reuses .venv: it creates no venv and installs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import AUDIO_DIR
from tests.servers import ROOT

TALK = "long_gates_ted.wav"


def test_the_dry_run_runs_every_step_on_the_cpu_with_the_speech_it_is_given(tmp_path):
    audio = tmp_path / "speech"  # not ../shared/audio: a machine may have no such folder
    audio.mkdir()
    # The two clients stream the first two recordings (short, with pauses); the decode
    # and fault steps cut their pieces from the talk.
    recordings = ["fw_libri_61_left.wav", "jfk.flac", TALK]
    for name in recordings:
        (audio / name).symlink_to(AUDIO_DIR / name)
    # SQLite and the in-memory channel layer in a scratch folder, as on a bare machine.
    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith("PYTEST")}
    env["BENCH_AUDIO_DIR"] = str(audio)
    done = subprocess.run(["bench/gpu_check.sh", "--dry-run", "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GPU check" in done.stdout
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["audio"] == {"dir": str(audio.resolve()), "files": recordings}
    [result] = report["results"]
    assert result["model"] == "tiny.en"
    rows = result["decode"]["rows"]
    assert {(row["kind"], row["window_s"], row["batch"]) for row in rows} == {
        (kind, 10, batch) for kind in ("partial", "final") for batch in (1, 2)}
    assert all(row["batch_ms"] > 0 for row in rows)
    [load] = result["perf"]
    assert (load["clients"], load["sessions_failed"], load["errors"]) == (2, 0, [])
    assert load["final_count"] > 0 and load["p95_final_latency_ms"] is not None
    faults = result["faults"]
    assert faults["dry_run"] and faults["ok"], faults
    assert faults["would_run"] == ["out_of_memory_path", "breaker_path"]


def test_a_speech_folder_without_the_talk_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--audio-dir", str(tmp_path),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"holds no {TALK}" in done.stderr and "--audio-dir" in done.stderr
    assert not (tmp_path / "out").exists()
