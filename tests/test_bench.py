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
              "cerebral-k1-auto", "cerebral-gru-k1-auto", "cerebral-reference", "lstm", "gru", "lstm-lib", "gru-lib",
              "lstm-2layer", "lstm-matched"}
# the regularised layers, opt-in (--models): each against cerebral-auto, the same layer unregularised
REGULARISED_MODELS = {"cerebral-weight-dropout", "cerebral-recurrent-dropout", "cerebral-zoneout",
                      "cerebral-layer-norm"}
CEREBRAL_BACKENDS = {"reference", "lstm2h", "native"}  # a new backend name: add it here
MACHINE_KEYS = {"cpu_model", "cpu_vendor", "cpu_id", "isa_flags", "cpu_capability", "env", "native",
                "threads", "interop_threads", "cpu_count", "cpus_available", "memory_bytes", "mkldnn",
                "torch", "python", "os", "machine", "load_average_start", "load_average_end", "l2_cache",
                "mm_peak_gflops", "gpu"}


# The registry as documented (benchmarks/speed.py's docstring, the README), written out by hand: each model's
# baseline and targets (the speed issue: K = 2 at 2.0x nn.LSTM(H) for training and inference, 1.5x peak training
# memory; K = 3 at 3.0x; peephole 2.2x; CerebralGRU 2.0x nn.GRU(H); cerebral_rnn.LSTM / GRU 1.0x torch's; the
# regularisers issue: a regulariser 1.3x the same layer unregularised, training and inference).
BASELINES = {"cerebral-auto": "lstm", "cerebral-k3-auto": "lstm", "cerebral-peephole-auto": "lstm",
             "cerebral-gru-auto": "gru", "cerebral-k1-auto": "lstm", "cerebral-gru-k1-auto": "gru",
             "cerebral-reference": "lstm", "lstm": "lstm", "gru": "lstm", "lstm-lib": "lstm", "gru-lib": "gru",
             "lstm-2layer": "lstm", "lstm-matched": "lstm", **dict.fromkeys(REGULARISED_MODELS, "cerebral-auto")}
NO_TARGETS = {"train": None, "infer": None, "memory": None}
TARGETS = {"cerebral-auto": {"train": 2.0, "infer": 2.0, "memory": 1.5},
           "cerebral-k3-auto": {"train": 3.0, "infer": 3.0, "memory": None},
           "cerebral-peephole-auto": {"train": 2.2, "infer": 2.2, "memory": None},
           "cerebral-gru-auto": {"train": 2.0, "infer": 2.0, "memory": None},
           "lstm-lib": {"train": 1.0, "infer": 1.0, "memory": None},
           "gru-lib": {"train": 1.0, "infer": 1.0, "memory": None},
           **dict.fromkeys(("cerebral-k1-auto", "cerebral-gru-k1-auto", "cerebral-reference", "lstm", "gru",
                            "lstm-2layer", "lstm-matched"), NO_TARGETS),
           **{name: {"train": 1.3, "infer": 1.3, "memory": None} for name in REGULARISED_MODELS}}
# The default grid (T, B, I, H, L, train, infer): the README's 7 one-layer shapes, then pytorch/examples'
# word_language_model client (two layers, I = H = 64, bptt 35; training at B = 20, inference at B = 10).
GRID = [(100, 64, 32, 128, 1, True, True), (500, 32, 32, 128, 1, True, True),
        (100, 8, 32, 128, 1, True, True), (100, 1, 32, 128, 1, True, True),
        (200, 128, 128, 256, 1, True, True), (100, 64, 256, 512, 1, True, True),
        (25, 64, 512, 512, 1, True, True), (35, 20, 64, 64, 2, True, False), (35, 10, 64, 64, 2, False, True)]
# lstm-matched's hidden size h, worked out by hand: the h whose L-layer nn.LSTM(I, h) has the parameter count
# closest to CerebralLSTM(I, H, L)'s (K = 2), the smaller h on a tie. nn.LSTM: 4h (I + h + 2) in layer 0 and
# 4h (2h + 2) above. E.g. (32, 128, 1): the target is 2 * 4 * 128 * 162 = 165888; h = 187 gives 4 * 187 * 221
# = 165308 (580 short), h = 188 gives 4 * 188 * 222 = 166944 (1056 over).
MATCHED_HIDDEN = {(32, 128, 1): 187,
                  (3, 8, 1): 12,  # 832: 4*12*17 = 816, 4*13*18 = 936
                  (3, 64, 1): 92,  # 35328: 4*91*96 = 34944, 4*92*97 = 35696
                  (5, 16, 2): 23}  # 2944 + 4352 = 7296: 23 -> 2760 + 4416 = 7176, 24 -> 2976 + 4800 = 7776


# (gates per path, paths, peephole) of each model's layers; lstm-2layer has 2L layers, lstm-matched hidden h
LAYER_FORMS = {"cerebral-auto": (4, 2, False), "cerebral-reference": (4, 2, False),
               "cerebral-k3-auto": (4, 3, False), "cerebral-peephole-auto": (4, 2, True),
               "cerebral-gru-auto": (3, 2, False), "cerebral-k1-auto": (4, 1, False),
               "cerebral-gru-k1-auto": (3, 1, False), "lstm": (4, 1, False), "gru": (3, 1, False),
               "lstm-lib": (4, 1, False), "gru-lib": (3, 1, False), "lstm-2layer": (4, 1, False),
               "lstm-matched": (4, 1, False)}


def hand_params(name: str, I: int, H: int, L: int) -> int:
    """The parameter count of model ``name`` at (I, H, L) from the layers' documented parameter shapes: per
    layer and path, weight_ih (G h, in) and weight_hh (G h, h) with G = 4 gates (LSTM) or 3 (GRU), two (G h,)
    biases and, for the peephole LSTM, a (3 h,) peephole vector; ``in`` is I in layer 0, h above."""
    gates, paths, peephole = LAYER_FORMS[name]
    h = MATCHED_HIDDEN[I, H, L] if name == "lstm-matched" else H
    layers = 2 * L if name == "lstm-2layer" else L
    return sum(paths * (gates * h * ((I if layer == 0 else h) + h + 2) + (3 * h if peephole else 0))
               for layer in range(layers))


def test_registry_is_the_documented_one():
    """Models, default models, baselines, targets, the default grid and lstm-matched's hidden size, against the
    values written out by hand above."""
    assert set(speed.MODELS) == ALL_MODELS | REGULARISED_MODELS == set(BASELINES) == set(TARGETS)
    assert set(speed.DEFAULT_MODELS) == ALL_MODELS - {"cerebral-reference"}  # the regularised ones: opt-in
    for name, model in speed.MODELS.items():
        assert model.name == name and model.baseline == BASELINES[name], name
        assert model.targets == TARGETS[name], name
    assert [(s.T, s.B, s.I, s.H, s.L, s.train, s.infer) for s in speed.SHAPES] == GRID
    for (I, H, L), h in MATCHED_HIDDEN.items():
        assert speed.matched_hidden(I, H, L) == h, (I, H, L)


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
    isa = (report["machine"]["cpu_capability"] or "unknown").lower()
    assert [w.name for w in written] == [f"speed-cpu-{speed.slug(report['machine']['cpu_model'])}-{isa}-quick.json"]
    data = json.loads(written[0].read_text())
    assert data["schema"] == speed.SCHEMA and data["device"] == "cpu"
    expected = f"python benchmarks/speed.py --quick --with-reference --threads 1 --markdown {md}"
    assert data["command"].endswith(expected)

    machine = data["machine"]
    assert MACHINE_KEYS <= set(machine)
    assert machine["mm_peak_gflops"]["n"] == 256 and machine["mm_peak_gflops"]["gflops"] > 0
    assert machine["cpu_model"] and machine["threads"] == 1 and machine["torch"]
    assert set(machine["isa_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx"}
    assert {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"} <= set(machine["env"])
    assert set(machine["native"]) == {"ready", "unavailable_reason", "build_target", "origin", "load_seconds"}
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
            assert r["num_layers"] == expected_layers
            assert r["params"] == hand_params(name, shape.I, shape.H, shape.L), name
            hidden = MATCHED_HIDDEN[shape.I, shape.H, shape.L] if name == "lstm-matched" else shape.H
            assert r["hidden_size"] == hidden and r["num_paths"] == LAYER_FORMS[name][1], name
            assert r["baseline"] == BASELINES[name] == q["baseline"]
            assert r["targets"] == TARGETS[name]
            for mode in ("train", "infer"):
                if mode in modes:
                    assert r[f"{mode}_ms"] > 0 and len(q[mode]["runs"]) == runs
                    assert q[mode]["min"] <= q[mode]["median"] <= q[mode]["max"]
                    assert len(r[f"{mode}_backends"]) == (1 if name.startswith(("lstm", "gru")) else shape.L)
                    if name.startswith("cerebral"):
                        assert set(r[f"{mode}_backends"]) <= CEREBRAL_BACKENDS
                    elif name in ("lstm-lib", "gru-lib"):  # cerebral_rnn.LSTM / GRU: native or torch's op
                        assert r[f"{mode}_backend"] in ("native", "torch")
                    else:  # torch's own modules
                        assert r[f"{mode}_backend"] == "torch"
                else:
                    assert r[f"{mode}_ms"] is None and q[mode] is None and r[f"{mode}_backend"] is None
            # GFLOP/s from the matrix products' multiply-adds, worked out here: per layer and path 2 T B G h (in + h)
            gates, paths, _ = LAYER_FORMS[name]
            fwd = sum(2 * shape.T * shape.B * paths * gates * hidden * ((shape.I if layer == 0 else hidden) + hidden)
                      for layer in range(expected_layers))
            for mode, factor in (("train", 3), ("infer", 1)):
                if mode in modes:
                    assert r[f"{mode}_gflops"] == pytest.approx(factor * fwd / (r[f"{mode}_ms"] * 1e6), rel=1e-9)
                else:
                    assert r[f"{mode}_gflops"] is None
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


def test_slug_names_a_cpu_in_a_file_name():
    assert speed.slug("AMD EPYC 7B13") == "amd-epyc-7b13"
    assert speed.slug("Intel(R) Xeon(R) Platinum 8480+") == "intel-r-xeon-r-platinum-8480"
    assert speed.slug(None) == "unknown" and speed.slug("++") == "unknown"
