"""Peak memory and time of decoding one long upload (stt.audio.decode_file), before and
after, in the same run: each decode runs in a fresh child process that reports its
resident memory before the decode and its peak (ru_maxrss) after.

    .venv/bin/python bench/upload_memory.py                  # 30 minutes of silence and of speech, FLAC
    .venv/bin/python bench/upload_memory.py --minutes 5 --before 0a4fa81
    .venv/bin/python bench/upload_memory.py --dry-run        # one minute: checks it runs

The target (issue 23): peak resident memory added by decoding a 30-minute upload is at
most 2x its decoded PCM (16 kHz float32: 115 MB for 30 minutes). "before" is
decode_file as of the commit given by --before (default: the last one before the
bounded decoder), loaded from git into the child.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUDIO = ROOT.parent / "shared" / "audio"
SAMPLE_RATE = 16000

CHILD = r"""
import importlib.util, json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fasttalk.settings")
import numpy, av  # loaded before the baseline is read
spec = importlib.util.spec_from_file_location("audio_under_test", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
before = rss_kb()
started = time.perf_counter()
audio = module.decode_file(sys.argv[3], max_seconds=4 * 3600)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"samples": int(audio.size), "rss_before_kb": before, "peak_kb": peak,
                  "rss_after_kb": rss_kb(), "seconds": seconds}))
"""


def make_file(kind: str, minutes: float, folder: Path) -> Path:
    """A FLAC of `minutes` of silence, or of the talk recording repeated."""
    import numpy as np
    import soundfile

    samples = int(minutes * 60 * SAMPLE_RATE)
    if kind == "silence":
        audio = np.zeros(samples, dtype=np.float32)
    else:
        talk, _ = soundfile.read(AUDIO / "long_gates_ted.wav", dtype="float32")
        audio = np.resize(talk, samples)
    path = folder / f"{kind}-{minutes:g}min.flac"
    soundfile.write(path, audio, SAMPLE_RATE, format="FLAC")
    return path


def measure(module_path: Path, upload: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(module_path), str(upload)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--before", default="0a4fa81", help="commit whose decode_file is 'before'")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    minutes = 1.0 if args.dry_run else args.minutes
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        old = folder / "audio_before.py"
        old.write_text(subprocess.run(["git", "show", f"{args.before}:stt/audio.py"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout)
        pcm_mb = minutes * 60 * SAMPLE_RATE * 4 / 1e6
        print(f"upload of {minutes:g} minutes: decoded PCM {pcm_mb:.0f} MB (target: added peak <= {2 * pcm_mb:.0f} MB)")
        print(f"{'file':<22} {'code':<8} {'flac MB':>8} {'peak added MB':>14} {'x PCM':>6} {'held after MB':>14} "
              f"{'seconds':>8}")
        for kind in ("silence", "speech"):
            upload = make_file(kind, minutes, folder)
            for label, module_path in (("before", old), ("after", ROOT / "stt" / "audio.py")):
                figures = measure(module_path, upload)
                added = (figures["peak_kb"] - figures["rss_before_kb"]) / 1000
                kept = (figures["rss_after_kb"] - figures["rss_before_kb"]) / 1000
                print(f"{upload.name:<22} {label:<8} {upload.stat().st_size / 1e6:>8.1f} {added:>14.0f} "
                      f"{added / pcm_mb:>6.2f} {kept:>14.0f} {figures['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
