"""Build script for the optional Cython helpers (the byte scanner, the header relay, the
request fast path, the DLP detectors, the metrics accumulator and access-log writer, the
usage drain -- pricing, rows, journal fields -- and the SQLite writer's row parameters).

The extension is built when Cython and a C compiler are available. When either is
missing the install still succeeds and ``plano_fast.wire`` falls back to the pure-Python
twins (``plano_fast/wire/_scan_py.py``, ``_head_py.py``), reporting which implementation is active.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install when a compiler is missing."""

    def finalize_options(self) -> None:
        super().finalize_options()
        # Compile the modules side by side (``build_ext -j N`` overrides): the image build,
        # ``make env`` and the Dockerfile's test each compile a dozen C files from scratch.
        if not self.parallel:
            self.parallel = _JOBS

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "use the twin"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
                raise
            self._warn(exc)

    @staticmethod
    def _warn(exc: BaseException) -> None:
        sys.stderr.write(
            f"plano_fast: the Cython scanner was not built ({exc}); "
            "the pure-Python scanner will be used\n"
        )


_JOBS = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
"""Parallel cythonize and C compile jobs: the usable cores, at most 8."""

#: What the compiled modules read besides their own .pyx (the scanner's included pieces, the
#: shared byte helpers, the SIMD header): a change to any of these rebuilds.
WIRE_DEPENDS = sorted(glob.glob("plano_fast/wire/*.pxi")) + ["plano_fast/wire/_bytes.pxd", "plano_fast/wire/_head.pxd",
                                                                "plano_fast/wire/_digits.pxd", "plano_fast/wire/_scan.pxd",
                                                                "plano_fast/wire/_simd.h",
                                                                "plano_fast/wire/_dlp_simd.h"]


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        sys.stderr.write("plano_fast: Cython not installed; using the pure-Python scanner\n")
        return []
    annotate = os.environ.get("PLANO_FAST_CYTHON_ANNOTATE") == "1"
    return cythonize(
        [
            Extension(f"plano_fast.wire.{name}", [f"plano_fast/wire/{name}.pyx"], extra_compile_args=["-O3"],
                      depends=WIRE_DEPENDS)
            for name in ("_scan", "_head", "_request", "_dlp", "_obs")
        ]
        # the flusher's per-event work: pricing, rows, journal fields (twin plano_fast/billing/_drain_py.py)
        + [Extension("plano_fast.billing._drain", ["plano_fast/billing/_drain.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/wire/_digits.pxd"])]
        # the SQLite writer's parameters of a chunk of usage rows (twin plano_fast/store/_params_py.py)
        + [Extension("plano_fast.store._params", ["plano_fast/store/_params.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd"])]
        # the request path's UsageEvent constructor (twin: the dataclass itself)
        + [Extension("plano_fast._usage_event", ["plano_fast/_usage_event.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/_usage_event.pxd"])]
        # the request path's Request, ClientHeaders and Credential constructors (twins: the classes)
        + [Extension(f"plano_fast.{name}", [f"plano_fast/{name}.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/_new_credentials.pxd" if name == "_new_credentials"
                              else "plano_fast/_responder_slots.pxi"])
           for name in ("_new_request", "_new_credentials")]
        # the request path's Exchange constructor (twin plano_fast.gateway.relay.new_exchange)
        + [Extension("plano_fast.gateway._new_exchange", ["plano_fast/gateway/_new_exchange.pyx"],
                     extra_compile_args=["-O3"], depends=["plano_fast/_slots.pxd"])]
        # a trace span's OTLP bytes (twin plano_fast.otlp.OtlpEncoder._span_py); a sampled
        # request's span records made and ended (twins in plano_fast.spans and plano_fast.tracing)
        + [Extension(f"plano_fast.{name}", [f"plano_fast/{name}.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/_span_slots.pxi"])
           for name in ("_otlp", "_spans")]
        # the exchange's usage event (twin plano_fast.gateway.relay.make_event_py)
        + [Extension("plano_fast.gateway._settle", ["plano_fast/gateway/_settle.pyx"],
                     extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/_clock.pxd", "plano_fast/_usage_event.pxd"])]
        # a whole plain answer relayed in one call (twin plano_fast.upstream.take_whole_answer_py)
        + [Extension("plano_fast.gateway._answer", ["plano_fast/gateway/_answer.pyx"],
                     extra_compile_args=["-O3"], depends=["plano_fast/_slots.pxd", "plano_fast/_clock.pxd",
                                                          "plano_fast/wire/_digits.pxd", "plano_fast/wire/_head.pxd",
                                                          "plano_fast/_responder_slots.pxi", "plano_fast/wire/_scan.pxd"])]
        # a pooled connection taken and the request sent in one call (twin
        # plano_fast.gateway.relay.forward_now_py); a plain firewall request identified and
        # forwarded in one call (twin plano_fast.gateway.modes.firewall.start_py), a plain
        # config-mode one routed and forwarded (twin plano_fast.gateway.modes.config.start_py), a
        # plain managed one identified by its token and forwarded (twin ...modes.managed.start_py)
        + [Extension(f"plano_fast.gateway.{name}", [f"plano_fast/gateway/{name}.pyx"],
                     extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd", "plano_fast/_clock.pxd", "plano_fast/gateway/_forward.pxd",
                              "plano_fast/_new_credentials.pxd", "plano_fast/gateway/_start_slots.pxi",
                              "plano_fast/wire/_head.pxd", "plano_fast/wire/_scan.pxd"])
           for name in ("_forward", "_firewall", "_config", "_managed")]
        # a firewall or config-mode request handed to its exchange (twin
        # plano_fast.gateway.dispatch.dispatch_py)
        + [Extension("plano_fast.gateway._dispatch", ["plano_fast/gateway/_dispatch.pyx"],
                     extra_compile_args=["-O3"], depends=["plano_fast/_slots.pxd"])]
        # the server's read of plain requests (twins plano_fast.http_server.data_received_py, start_py)
        + [Extension("plano_fast._serve", ["plano_fast/_serve.pyx"], extra_compile_args=["-O3"],
                     depends=["plano_fast/_slots.pxd"])],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        annotate=annotate,
        nthreads=_JOBS if _JOBS > 1 else 0,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
