"""The benchmark script, run in-process: ``benchmarks/speed.py --quick`` writes a complete report (machine
record, every model at every shape, runs x repeats timings, ratios and targets) and its markdown table; bad
arguments fail with argparse errors naming the flag. One thread, tiny shapes: a few seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "speed.py")
speed = sys.modules.setdefault("bench_speed", importlib.util.module_from_spec(_spec))
if not hasattr(speed, "main"):
    _spec.loader.exec_module(speed)

ALL_MODELS = {"cerebral-auto", "cerebral-k3-auto", "cerebral-peephole-auto", "cerebral-gru-auto",
              "cerebral-reference", "lstm", "gru", "lstm-2layer", "lstm-matched"}
CEREBRAL_BACKENDS = {"reference", "lstm2h", "fused", "native"}  # a new backend name: add it here
MACHINE_KEYS = {"cpu_model", "cpu_vendor", "cpu_id", "isa_flags", "cpu_capability", "env", "native",
                "threads", "interop_threads", "cpu_count", "cpus_available", "memory_bytes", "mkldnn",
                "torch", "python", "os", "machine", "load_average_start", "load_average_end", "gpu"}


def test_registry_is_what_the_tests_expect():
    assert set(speed.MODELS) == ALL_MODELS
    assert set(speed.DEFAULT_MODELS) == ALL_MODELS - {"cerebral-reference"}
    assert speed.MODELS["cerebral-gru-auto"].baseline == "gru"
    assert speed.MODELS["cerebral-auto"].targets == {"train": 2.2, "infer": 2.2, "memory": 2.2}
    assert speed.MODELS["cerebral-k3-auto"].targets["train"] == pytest.approx(1.1 * 3)
    # the word_language_model client: two layers, training at B = 20 and inference at B = 10
    assert speed.Shape(35, 20, 64, 64, 2, infer=False) in speed.SHAPES
    assert speed.Shape(35, 10, 64, 64, 2, train=False) in speed.SHAPES


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One in-process --quick run with the reference loop; the JSON at its default path, a markdown file."""
    out = tmp_path_factory.mktemp("bench")
    md = out / "table.md"
    mp = pytest.MonkeyPatch()
    mp.chdir(out)
    try:
        report = speed.main(["--quick", "--with-reference", "--threads", "1", "--markdown", str(md)])
    finally:
        mp.undo()
    return out, report, md


def test_quick_report(quick):
    out, report, md = quick
    written = list((out / "bench-results").glob("speed-cpu-*-quick.json"))
    assert written == [out / speed.default_json_path("cpu", report["machine"], quick=True)]
    data = json.loads(written[0].read_text())
    assert data["schema"] == speed.SCHEMA and data["device"] == "cpu"
    expected = f"python benchmarks/speed.py --quick --with-reference --threads 1 --markdown {md}"
    assert data["command"].endswith(expected)

    machine = data["machine"]
    assert MACHINE_KEYS <= set(machine)
    assert machine["cpu_model"] and machine["threads"] == 1 and machine["torch"]
    assert set(machine["isa_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx"}
    assert {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"} <= set(machine["env"])
    assert set(machine["native"]) == {"ready", "unavailable_reason", "build_target", "load_seconds"}
    assert machine["load_average_end"] is None or len(machine["load_average_end"]) == 3

    settings = data["settings"]
    runs, repeats = settings["runs"], settings["repeats"]
    assert (runs, repeats) == (2, 2) and set(settings["models"]) == ALL_MODELS
    assert len(data["results"]) == len(speed.QUICK_SHAPES)
    modes_seen = set()
    for entry, shape in zip(data["results"], speed.QUICK_SHAPES):
        assert entry["shape"] == {"T": shape.T, "B": shape.B, "I": shape.I, "H": shape.H, "L": shape.L,
                                  "train": shape.train, "infer": shape.infer}
        modes = [m for m in ("train", "infer") if entry["shape"][m]]
        modes_seen.update(modes)
        assert set(entry["models"]) == set(entry["ratios"]) == ALL_MODELS
        assert len(entry["passes"]) == runs
        for p in entry["passes"]:
            assert set(p["models"]) == ALL_MODELS
            for r in p["models"].values():
                for mode in modes:
                    assert len(r[f"{mode}_ms_runs"]) == repeats and all(t > 0 for t in r[f"{mode}_ms_runs"])
        for name, r in entry["models"].items():
            q = entry["ratios"][name]
            expected_layers = 2 * shape.L if name == "lstm-2layer" else shape.L
            assert r["num_layers"] == expected_layers and r["params"] > 0
            assert r["baseline"] == speed.MODELS[name].baseline == q["baseline"]
            assert r["targets"] == speed.MODELS[name].targets
            for mode in ("train", "infer"):
                if mode in modes:
                    assert r[f"{mode}_ms"] > 0 and len(q[mode]["runs"]) == runs
                    assert q[mode]["min"] <= q[mode]["median"] <= q[mode]["max"]
                    assert len(r[f"{mode}_backends"]) == (1 if name.startswith(("lstm", "gru")) else shape.L)
                    if name.startswith("cerebral"):
                        assert set(r[f"{mode}_backends"]) <= CEREBRAL_BACKENDS
                    else:
                        assert r[f"{mode}_backend"] == "torch"
                else:
                    assert r[f"{mode}_ms"] is None and q[mode] is None and r[f"{mode}_backend"] is None
            if "train" in modes and r["peak_train_bytes"] is not None:
                assert r["peak_train_bytes"] > 0 and q["memory"] > 0
            assert set(q["over_target"]) <= {k for k, v in r["targets"].items() if v is not None}
        for mode in modes:
            assert entry["ratios"]["lstm"][mode]["runs"] == [1.0] * runs
            assert entry["ratios"]["gru"][mode]["median"] > 0
        if "train" in modes:
            assert entry["models"]["cerebral-reference"]["train_backend"] == "reference"
    assert modes_seen == {"train", "infer"}
    assert data == json.loads(json.dumps(report))

    text = md.read_text()
    first = text.splitlines()[0]
    assert machine["cpu_model"] in first and "1 thread " in first and machine["torch"] in first
    assert (machine["cpu_capability"] or "unknown") in first and data["command"] in first
    assert "| T, B, I, H | model |" in text and "`cerebral-gru-auto`" in text and "`lstm-matched`" in text
    assert "35, 20" not in text and "4, 3, 5, 16, L=2 train" in text


def test_subset_adds_baselines_and_one_mode(tmp_path, capsys):
    out = tmp_path / "s.json"
    report = speed.main(["--shapes", "3,2,4,16,2:train", "--models", "cerebral-gru-auto", "--runs", "1",
                         "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert report["settings"]["models"] == ["cerebral-gru-auto", "lstm", "gru"]
    (entry,) = report["results"]
    assert entry["ratios"]["cerebral-gru-auto"]["baseline"] == "gru"
    assert entry["models"]["cerebral-gru-auto"]["infer_ms"] is None
    assert entry["models"]["cerebral-gru-auto"]["train_ms"] > 0 and entry["models"]["gru"]["num_layers"] == 2
    assert json.loads(out.read_text())["results"][0]["label"] == "3, 2, 4, 16, L=2 train"
    assert "| 3, 2, 4, 16, L=2 train | `cerebral-gru-auto` |" in capsys.readouterr().out


def test_parse_shape():
    assert speed.parse_shape("35,20,64,64,2:train") == speed.Shape(35, 20, 64, 64, 2, infer=False)
    assert speed.parse_shape("1,2,3,4:infer") == speed.Shape(1, 2, 3, 4, 1, train=False)
    assert speed.parse_shape("1, 2, 3, 4") == speed.Shape(1, 2, 3, 4)


@pytest.mark.parametrize("argv, flag", [
    (["--shapes", "1,2,3"], "--shapes"),
    (["--shapes", "1,2,3,0"], "--shapes"),
    (["--shapes", "1,2,3,4:eval"], "--shapes"),
    (["--runs", "0"], "--runs"),
    (["--repeats", "x"], "--repeats"),
    (["--threads", "-1"], "--threads"),
    (["--models", "cerebral-nope"], "--models"),
])
def test_bad_arguments_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        speed.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err, err


def test_cpu_fallbacks():
    """ARM Linux has no vendor_id / model name in /proc/cpuinfo; every path still names something."""
    assert speed._cpu_vendor({"CPU implementer": "0x41"}, "any") == "ARM"
    assert speed._cpu_vendor({"CPU implementer": "0x61"}, "any") == "Apple"
    assert speed._cpu_vendor({"vendor_id": "AuthenticAMD", "CPU implementer": "0x41"}, "") == "AuthenticAMD"
    assert speed._cpu_model({"model name": "AMD EPYC 7B13"}) == "AMD EPYC 7B13"
    assert speed._cpu_model({})  # lscpu, sysctl, platform.processor() or platform.machine()
