"""Run Plano's own end-to-end Responses API tests against plano_fast, offline.

Plano's ``tests/e2e/test_openai_responses_api_client.py`` and
``test_openai_responses_api_client_with_state.py`` (katanemo/plano; not vendored here: pass
the directory of a checkout) talk to ``$LLM_GATEWAY_ENDPOINT`` with the openai SDK.  This
starts the fake provider (every format) and one gateway in front of it, with
``state_storage: {type: memory}`` and the models those tests name:

* ``gpt-4o``, ``openai/gpt-5-mini-2025-08-07``: OpenAI (the Responses passthrough);
* ``claude-sonnet-4-6``: Anthropic Messages (converted);
* ``arch.grok.v1``: an alias of an OpenAI-compatible provider without a responses path
  (DeepSeek: converted to chat completions; Plano's own config points it at xAI);
* ``coding-model``: Plano points it at Bedrock, which plano_fast does not convert to; here
  an alias of the Anthropic model, so the tests still exercise a converted provider.

The fake provider answers canned text, so asserts that need a model's intelligence (the
state tests' "the answer mentions Alice") cannot pass: run with ``-k`` or read them as set
aside.  Usage::

    .venv/bin/python -m benchmarks.plano_e2e_responses /path/to/plano/tests/e2e [pytest args]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.fake_provider import FakeProviderThread
from tests.gateway_proc import GatewayProcess, write_config

TESTS = ("test_openai_responses_api_client.py", "test_openai_responses_api_client_with_state.py")
EXTRA = (
    "  - model: openai/gpt-4o\n"
    "    base_url: http://127.0.0.1:{port}\n"
    "    access_key: sk-server-openai-key\n"
    "  - model: deepseek/deepseek-chat\n"
    "    base_url: http://127.0.0.1:{port}/v1\n"
    "    access_key: sk-deepseek-key\n"
)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    e2e = Path(sys.argv[1])
    with FakeProviderThread() as fake, tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp) / "plano_config.yaml", fake.port, extra_providers=EXTRA.format(port=fake.port))
        text = config.read_text().replace(
            "model_aliases:\n",
            "model_aliases:\n  arch.grok.v1:\n    target: deepseek/deepseek-chat\n"
            "  coding-model:\n    target: anthropic/claude-sonnet-4-6\n",
        )
        config.write_text(text + "state_storage:\n  type: memory\n")
        with GatewayProcess(config) as gw:
            env = {**os.environ, "LLM_GATEWAY_ENDPOINT": gw.url + "/v1/chat/completions"}
            args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *(str(e2e / t) for t in TESTS),
                    *sys.argv[2:]]
            return subprocess.run(args, env=env, cwd=e2e).returncode


if __name__ == "__main__":
    sys.exit(main())
