"""Builds the ``native`` backend's C++ kernels at install time (``pip install .``, ``pip wheel .``), one extension
module per vector ISA (``src/cerebral_rnn/backends/_build.py``): ``cerebral_rnn.backends._native_avx512``,
``_native_avx2`` and ``_native_default`` on x86-64, ``_native_default`` elsewhere. At run time the package picks
the module for ATen's CPU capability.

The metadata lives in ``pyproject.toml``; this file only adds the extension modules. Environment:

* ``CEREBRAL_RNN_BUILD=0``: build nothing (a pure-Python install; the backend is then compiled on first use);
* ``CEREBRAL_RNN_BUILD_VARIANTS=avx2,default``: build only these variants.

A variant that fails to compile (no C++ compiler, say) is skipped with a warning and the install goes on; the
backend is then compiled on first use where a compiler exists, or ``backend="auto"`` uses the pure-PyTorch
backends.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_crnn_build", HERE / "src/cerebral_rnn/backends/_build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)


def _wanted() -> list[str]:
    if os.environ.get("CEREBRAL_RNN_BUILD", "1") == "0":
        return []
    names = os.environ.get("CEREBRAL_RNN_BUILD_VARIANTS")
    if not names:
        return build.variants()
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in build.variants()]
    if bad:
        raise SystemExit(f"CEREBRAL_RNN_BUILD_VARIANTS: expected names among {build.variants()}, got {bad}")
    return wanted


def _extensions():
    wanted = _wanted()
    if not wanted:
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("cerebral-rnn: torch is not importable in the build environment; the native backend is not built "
              "now (it is compiled on first use)", file=sys.stderr)
        return [], {}

    source = os.path.relpath(build.SOURCE, HERE)
    modules = [CppExtension(f"cerebral_rnn.backends.{build.module_name(v)}", [source],
                            extra_compile_args=build.compile_flags(v), extra_link_args=build.link_flags(),
                            optional=True)
               for v in wanted]

    class BuildNative(BuildExtension):
        """Compiles the variants side by side (one per core) and turns a failed variant into a warning."""

        def finalize_options(self):
            super().finalize_options()
            if self.parallel is None:
                self.parallel = min(len(modules), os.cpu_count() or 1)

        def build_extension(self, ext):
            # every variant compiles the same source: each gets a build folder of its own (objects, build.ninja),
            # through a copy of this command, so that variants can compile in parallel threads
            clone = copy.copy(self)
            clone.build_temp = os.path.join(self.build_temp, ext.name)
            try:
                BuildExtension.build_extension(clone, ext)
            except Exception as exc:  # noqa: BLE001 - no compiler, a failed compile: not fatal for the install
                print(f"cerebral-rnn: WARNING: {ext.name} was not built ({type(exc).__name__}: "
                      f"{str(exc).strip()[:400]}); the native backend will be compiled on first use if a C++ "
                      "compiler is there, else backend='auto' uses the pure-PyTorch backends", file=sys.stderr)

    return modules, {"build_ext": BuildNative.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
