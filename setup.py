"""The compiled part of streamer: the window-state engine's per-record loop (docs/state.md).

Everything else is in pyproject.toml. The extension is optional: where it does not
build (no C compiler), streamer installs without it and the state engine runs its
pure-Python loop, which gives the same values; tests/unit/core/state/test_native.py
fails then, unless STREAMER_STATE_ENGINE=python says the build is off on purpose.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "streamer.core.state._engine",
            ["streamer/core/state/_engine.c"],
            # Floats as CPython computes them: no contraction of a*b+c into one rounding.
            extra_compile_args=["-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
