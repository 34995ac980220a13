"""plano_fast: a fast LLM API gateway compatible with Plano's configuration."""

__version__ = "0.1.0"
