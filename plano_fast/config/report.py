"""Problem reporting and ``$VAR`` expansion shared by the loader's sections.

Every problem is collected (not just the first) as a ``<file>: <field path>: <reason>``
line; pydantic's errors are rewritten into that form with a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

from plano_fast.config.schema import _TopIn

Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


class _Reporter:
    """Collects errors, warnings and not-implemented lines for one config file."""

    def __init__(self, source: str, env: Mapping[str, str], allow_missing_env: bool = False) -> None:
        self.source = source
        self.env = env
        self.allow_missing_env = allow_missing_env
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.unimplemented: list[str] = []

    # -- reporting

    def line(self, loc: Loc, msg: str) -> str:
        where = _fmt_loc(loc)
        return f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}"

    def err(self, loc: Loc, msg: str) -> None:
        self.errors.append(self.line(loc, msg))

    def warn(self, loc: Loc, msg: str) -> None:
        self.warnings.append(self.line(loc, msg))

    def not_implemented(self, loc: Loc | str, msg: str) -> None:
        where = loc if isinstance(loc, str) else _fmt_loc(loc)
        self.unimplemented.append(f"{self.source}: {where}: not implemented by plano_fast: {msg}")

    def validate(self, cls: type[_M], data: Any, loc: Loc) -> _M | None:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            for e in exc.errors(include_url=False):
                sub: Loc = tuple(e["loc"])
                kind = e["type"]
                if kind == "extra_forbidden":
                    hint = ""
                    if len(sub) == 1 and isinstance(sub[0], str):
                        hint = _suggest(sub[0], list(cls.model_fields))
                    if cls is _TopIn:
                        msg = (
                            "unknown top-level key (not a Plano config key; plano_fast's own "
                            "settings go under 'plano_fast:')" + hint
                        )
                    else:
                        msg = "unknown field" + hint
                elif kind == "value_error":
                    msg = str(e.get("ctx", {}).get("error", e["msg"]))
                elif kind == "literal_error":
                    msg = f"{e['msg']} (got {e['input']!r})"
                elif kind == "model_type" or kind == "model_attributes_type":
                    msg = f"expected a mapping, got {type(e['input']).__name__}"
                else:
                    msg = e["msg"]
                self.err(loc + sub, msg)
            return None

    def expand(self, value: str | None, loc: Loc, required: bool = True) -> str | None:
        """Expand $VAR / ${VAR}; None if a variable is unset or empty.

        That is an error, or only a warning when the value is not ``required``.
        """
        if value is None or "$" not in value:
            return value
        bad: list[str] = []

        def sub(m: re.Match[str]) -> str:
            var = m.group(1) or m.group(2)
            got = self.env.get(var)
            if not got:
                bad.append(var)
                return ""
            return got

        out = _ENV_RE.sub(sub, value)
        for var in bad:
            state = "is empty" if var in self.env else "is not set"
            msg = f"references environment variable ${var}, which {state}"
            if not required:
                self.warn(loc, msg + " (unused: passthrough_auth is true)")
            elif self.allow_missing_env:
                self.warn(loc, msg + " (checked with a placeholder)")
            else:
                self.err(loc, msg)
        if bad and required and self.allow_missing_env:
            return _ENV_RE.sub(lambda m: self.env.get(m.group(1) or m.group(2)) or
                               _placeholder(value, loc), value)
        return None if bad else out


_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def _placeholder(value: str, loc: Loc) -> str:
    """What an unset ``$VAR`` stands for under ``allow_missing_env``: a value every check
    of that field accepts (a URL where the variable is the whole ``base_url``)."""
    if loc and loc[-1] == "base_url" and _ENV_RE.fullmatch(value.strip()):
        return "http://env-placeholder.invalid"
    # Long enough for any length rule on a secret (an admin key, say).
    return "env-placeholder-" + "0" * 32


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
