"""How the ``native`` backend's C++ source is compiled: one variant per vector ISA, shared by ``setup.py`` (the
variants built at install time) and :mod:`cerebral_rnn.backends.native` (the build on first use, where no
installed variant fits). Imports nothing but the standard library, so that ``setup.py`` can read it by path.

Variants (x86-64): ``avx512`` (``-march=x86-64-v4``), ``avx2`` (``-march=x86-64-v3``) and ``default`` (no
``-march``: ATen's generic ``Vectorized``, correct on any CPU; the only variant elsewhere, e.g. ARM). Each
selects ATen's vector implementation with ``CPU_CAPABILITY_AVX512`` / ``CPU_CAPABILITY_AVX2`` and puts it in a
namespace of its own (``CPU_CAPABILITY=crnn_<variant>``), as ATen's own per-ISA kernels do. Always ``-O3
-fopenmp -ffp-contract=off``: the arithmetic is what the source says, so the variants differ only in vector
width, never in rounding order within an element.
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

SOURCE = Path(__file__).with_name("native_kernels.cpp")
X86 = platform.machine().lower() in ("x86_64", "amd64")

# ATen's CPU capability -> the variant compiled for it (anything else: "default")
VARIANT_OF_CAPABILITY = {"AVX512": "avx512", "AVX2": "avx2"}
_ISA_FLAGS = {
    "avx512": ["-march=x86-64-v4", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-march=x86-64-v3", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}
_TARGETS = {"avx512": "x86-64-v4 (AVX-512)", "avx2": "x86-64-v3 (AVX2)"}


def variants() -> list[str]:
    """The variants this platform compiles: all three on x86-64, ``default`` elsewhere."""
    return ["avx512", "avx2", "default"] if X86 else ["default"]


def variant_for(capability: str) -> str:
    """The variant that runs at ATen's CPU capability ``capability`` (``"AVX512"``, ``"AVX2"``, ...)."""
    return VARIANT_OF_CAPABILITY.get(capability, "default") if X86 else "default"


def source_sha() -> str:
    """A hash of the C++ source: a compiled module records the hash it was built from, and is used only if it
    matches the source installed beside it (an edited source is rebuilt, never run stale)."""
    return hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:16]


def compile_flags(variant: str, tune_native: bool = False) -> list[str]:
    """Compiler flags of ``variant``; ``tune_native`` adds ``-mtune=native`` (a build for this machine only)."""
    if variant not in _ISA_FLAGS or (variant != "default" and not X86):
        raise ValueError(f"variant: expected one of {variants()}, got {variant!r}")
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", *_ISA_FLAGS[variant], f"-DCPU_CAPABILITY=crnn_{variant}",
             f"-DCRNN_SOURCE_SHA={source_sha()}", f"-DCRNN_VARIANT={variant}"]
    if tune_native and variant != "default":
        flags.insert(3, "-mtune=native")
    return flags


def link_flags() -> list[str]:
    return ["-fopenmp"]


def target(variant: str) -> str:
    """What ``variant`` is compiled for, in words."""
    return _TARGETS.get(variant, f"generic ({platform.machine()}, compiler default)")


def module_name(variant: str) -> str:
    """The installed extension module of ``variant`` (inside ``cerebral_rnn.backends``)."""
    return f"_native_{variant}"
