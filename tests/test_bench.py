"""The benchmark's smoke run, as CI executes it: ``benchmarks/speed.py --quick`` writes a complete JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"cerebral-auto", "cerebral-reference", "lstm", "lstm-2layer", "lstm-matched"}


def test_speed_quick_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| T, B, I, H |" in proc.stdout
    report = json.loads(out.read_text())
    for key in ("device", "torch", "threads", "cpu_count", "repeats", "memory_method", "baseline", "quick",
                "command", "results"):
        assert key in report, key
    assert report["device"] == "cpu" and report["quick"] is True and report["threads"] >= 1
    assert report["results"]
    for entry in report["results"]:
        assert set(entry["shape"]) == {"T", "B", "I", "H"}
        assert set(entry["models"]) == MODELS and set(entry["ratios"]) == MODELS
        for name, r in entry["models"].items():
            assert r["train_ms"] > 0 and r["infer_ms"] > 0 and len(r["train_ms_runs"]) == report["repeats"]
            assert r["peak_train_bytes"] is None or r["peak_train_bytes"] > 0
            assert set(entry["ratios"][name]) == {"train", "infer", "memory"}
        assert entry["ratios"]["lstm"]["train"] == 1.0
        for mode in ("train_backend", "infer_backend"):
            assert entry["models"]["cerebral-auto"][mode] in {"lstm2h", "fused", "native", "reference"}
            assert entry["models"]["cerebral-reference"][mode] == "reference"
            assert entry["models"]["lstm"][mode] == "torch"
