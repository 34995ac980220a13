"""plano_fast: a fast LLM API gateway compatible with Plano's configuration."""

from plano_fast import _compiled

__version__ = "0.1.0"

# Before any compiled module is imported: the pure switch and a stale build run the .py.
_compiled.install()
