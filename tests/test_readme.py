"""The README and the examples say what the code does: their configs validate, their
commands parse, and the list of what is not implemented is the code's list."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from plano_fast import unimplemented as U
from plano_fast.cli import _parser
from plano_fast.config import _TopIn, parse_config
from tests.gateway_proc import ROOT

README = (ROOT / "README.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def test_every_readme_config_block_validates_without_secrets_or_unimplemented_fields() -> None:
    configs = [b for b in _blocks(README, "yaml") if b.startswith("version:")]
    assert len(configs) >= 2  # the configuration reference and the firewall config
    for block in configs:
        cfg = parse_config(block, source="README", env={}, allow_missing_env=True)
        assert cfg.unimplemented == (), cfg.unimplemented
    firewall = next(b for b in configs if "mode: firewall" in b)
    assert parse_config(firewall, env={"PLANO_FAST_ADMIN_KEY": "k" * 32}).settings.mode == "firewall"
    # What the README calls the gateway's own section is what Plano's schema lacks.
    assert "(Plano's schema rejects this key)" in README


def _commands(text: str) -> list[list[str]]:
    """``plano-fast ...`` command lines (continuations joined, pipes and ``&`` cut)."""
    out = []
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0] if "plano-fast" in line.split("#", 1)[0] else line
        m = re.search(r"(?:\.venv/bin/)?plano-fast ([^|&`)]*)", line)
        if m is None or line.lstrip().startswith(("docker", "#")):
            continue
        words = shlex.split(m.group(1).replace("[", "").replace("]", ""))
        words = [w for w in words if w not in ("...",)]
        if words and words[0] in {"serve", "validate", "migrate", "keys", "limits", "usage", "users",
                                  "projects", "pipes", "provider-keys", "tokens", "managed"}:  # fmt: skip
            out.append(words)
    return out


@pytest.mark.parametrize(
    "source", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.yaml"))]
)
def test_every_documented_command_parses(source: str) -> None:
    text = (ROOT / source).read_text()
    if source == "README.md":
        text = "\n".join(_blocks(text, "sh"))
    else:  # the examples' commands are in their comments
        text = "\n".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    commands = _commands(text)
    assert commands or source == "examples/plano_config.yaml", source  # that one is `make run`
    for words in commands:
        words = [re.sub(r"<[^>]+>", "x", w) for w in words]
        try:
            _parser().parse_args(words)
        except SystemExit as exc:
            pytest.fail(f"{source}: `plano-fast {' '.join(words)}` does not parse ({exc})")


def test_the_readme_lists_what_the_code_does_not_implement() -> None:
    paragraph = README.split("What this version does not implement", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", paragraph))
    whole_sections = {p for p, _ in U.FIELDS if re.fullmatch(r"[a-z_]+", p)}
    assert whole_sections <= named, whole_sections - named
    # and no section is listed that the code implements
    assert named & set(_TopIn.model_fields) <= whole_sections | {"overrides", "listeners"}
    for kind in U.LISTENER_TYPES:
        assert f"{kind} " in paragraph or f"{kind} and" in paragraph, kind
