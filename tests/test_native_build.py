"""How the native backend is found: the module installed for this CPU, a build on first use (announced, under a
lock that a killed build cannot leave behind), and a warning when ``auto`` has to do without it."""

import hashlib
import os
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch
from helpers import REQUIRE_NATIVE, skip_unless_native

from cerebral_rnn import CerebralLSTM
from cerebral_rnn.backends import _build, native

SOURCE = Path(native.__file__).with_name("native_kernels.cpp")


def test_the_installed_module_is_the_one_for_this_cpu_built_from_this_source():
    skip_unless_native()
    variant = {"AVX512": "avx512", "AVX2": "avx2"}.get(native.capability(), "default") if native._X86 else "default"
    assert native._EXT.variant == variant
    if not native.BUILD_ORIGIN.startswith("installed module"):
        if REQUIRE_NATIVE:  # CI installs with pip, which compiles every variant
            pytest.fail(f"the native backend was not the installed module: {native.BUILD_ORIGIN}")
        pytest.skip(f"no installed module here ({native.BUILD_ORIGIN})")
    assert native._EXT.source_sha == hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:16]
    assert native._EXT.torch_version == torch.__version__.split("+")[0]
    assert native.BUILD_ORIGIN.endswith(f"_native_{variant}")


@pytest.mark.parametrize("attrs, why", [
    ({"torch_version": "1.0.0"}, "built for torch 1.0.0"),
    ({"source_sha": "0" * 16}, "another version of native_kernels.cpp"),
])
def test_an_installed_module_built_for_another_torch_or_source_is_not_used(monkeypatch, attrs, why):
    good = {"torch_version": torch.__version__.split("+")[0], "source_sha": _build.source_sha()}
    fake = types.SimpleNamespace(**{**good, **attrs})
    monkeypatch.setitem(sys.modules, "cerebral_rnn.backends._native_default", fake)
    mod, reason = native._installed("default")
    assert mod is None and why in reason
    monkeypatch.setitem(sys.modules, "cerebral_rnn.backends._native_default", types.SimpleNamespace(**good))
    assert native._installed("default") == (sys.modules["cerebral_rnn.backends._native_default"], None)


def test_a_missing_module_is_named_in_the_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "cerebral_rnn.backends._native_default", None)  # import raises ImportError
    mod, reason = native._installed("default")
    assert mod is None and "no installed module cerebral_rnn.backends._native_default" in reason


class FakeLoad:
    """Stands in for torch.utils.cpp_extension.load: records the call, 'builds' the library file."""

    def __init__(self):
        self.calls = []

    def __call__(self, name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        self.calls.append({"name": name, "folder": build_directory, "flags": extra_cflags})
        Path(build_directory, f"{name}.so").touch()
        return types.SimpleNamespace(name=name)


@pytest.fixture
def fake_load(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp

    load = FakeLoad()
    monkeypatch.setattr(cpp, "load", load)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    return load


def test_a_build_on_first_use_is_announced_once_per_machine(fake_load, capsys):
    _, origin = native._compile("default", "no installed module")
    err = capsys.readouterr().err
    assert "compiling the native CPU backend" in err and "no installed module" in err
    assert "CEREBRAL_RNN_NATIVE=0" in err
    assert origin == f"compiled on first use in {fake_load.calls[0]['folder']}"
    assert "-ffp-contract=off" in fake_load.calls[0]["flags"]
    native._compile("default", "no installed module")  # the library is in the cache now: loaded, not announced
    assert capsys.readouterr().err == ""
    assert len(fake_load.calls) == 2 and fake_load.calls[0]["name"] == fake_load.calls[1]["name"]


def test_a_lock_file_left_by_a_killed_build_is_removed(fake_load, tmp_path, capsys):
    name = native._jit_name("default", _build.compile_flags("default", tune_native=True))
    folder = tmp_path / name
    folder.mkdir()
    (folder / "lock").touch()  # torch's lock file: its loader waits on it forever
    native._compile("default", "test")
    assert not (folder / "lock").exists()
    assert "left by an interrupted build" in capsys.readouterr().err


def test_a_build_in_progress_is_waited_for_at_most_the_timeout(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl", reason="flock is POSIX")
    with open(tmp_path / "cerebral_rnn.flock", "w") as held:  # another open file: conflicts like another process
        fcntl.flock(held, fcntl.LOCK_EX)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="CEREBRAL_RNN_BUILD_TIMEOUT"), native._build_lock(tmp_path, 0.6):
            pass
        assert 0.5 < time.monotonic() - t0 < 5
    assert "waiting for another process" in capsys.readouterr().err


def test_a_killed_builder_does_not_block_the_next_build(tmp_path):
    pytest.importorskip("fcntl", reason="flock is POSIX")
    holder = ("import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
              "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "cerebral_rnn.flock")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError), native._build_lock(tmp_path, timeout=0.3):
            pass
        proc.kill()  # a build killed half-way
        proc.wait()
        t0 = time.monotonic()
        with native._build_lock(tmp_path, timeout=5):
            pass
        assert time.monotonic() - t0 < 2
    finally:
        proc.kill()
        proc.wait()


def test_a_bad_build_timeout_is_refused(monkeypatch):
    monkeypatch.setenv("CEREBRAL_RNN_BUILD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CEREBRAL_RNN_BUILD_TIMEOUT.*'soon'"):
        native._build_timeout()


def test_a_failed_build_gives_both_reasons(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", None)
    monkeypatch.setattr(native, "_installed", lambda v: (None, "no installed module X"))

    def fail(variant, why):
        raise RuntimeError("no compiler found")

    monkeypatch.setattr(native, "_compile", fail)
    assert native._load() is None
    assert "no installed module X" in native.unavailable_reason()
    assert "RuntimeError: no compiler found" in native.unavailable_reason()


def test_auto_warns_once_when_the_backend_is_missing(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", "the C++ extension could not be built: no compiler")
    monkeypatch.setattr(native, "_WARNED", False)
    m = CerebralLSTM(3, 4)
    x = torch.randn(2, 1, 3)
    with pytest.warns(RuntimeWarning, match="native backend is unavailable.*no compiler"):
        m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)  # once per process


def test_no_warning_when_it_is_turned_off(monkeypatch):
    monkeypatch.setattr(native, "_EXT", None)
    monkeypatch.setattr(native, "_ERROR", None)
    monkeypatch.setattr(native, "_WARNED", False)
    monkeypatch.setenv("CEREBRAL_RNN_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CerebralLSTM(3, 4)(torch.randn(2, 1, 3))


def test_every_variant_is_named_and_compiled_for_its_isa():
    assert _build.variants() == (["avx512", "avx2", "default"] if _build.X86 else ["default"])
    for v in _build.variants():
        flags = _build.compile_flags(v)
        assert f"-DCPU_CAPABILITY=crnn_{v}" in flags and "-mtune=native" not in flags
    with pytest.raises(ValueError, match="variant: expected one of"):
        _build.compile_flags("avx1024")
    if _build.X86:
        assert "-march=x86-64-v4" in _build.compile_flags("avx512")
        assert "-march=x86-64-v3" in _build.compile_flags("avx2")
        assert not any(f.startswith("-march") for f in _build.compile_flags("default"))


def test_setup_builds_the_variants_asked_for(tmp_path):
    """setup.py's variant list and its refusal of an unknown variant, without compiling."""
    root = Path(__file__).resolve().parents[1]
    code = "import runpy, sys; sys.argv = ['setup.py', '--name']; runpy.run_path('setup.py', run_name='__main__')"
    env = {**os.environ, "CEREBRAL_RNN_BUILD_VARIANTS": "avx1024"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0 and "CEREBRAL_RNN_BUILD_VARIANTS" in out.stderr + out.stdout
