"""Guard models: Plano's jailbreak guard and content moderation, asked before a request
is forwarded.

Config (Plano's ``prompt_guards`` says *that* a guard runs and what the client is told;
``plano_fast.guard_models`` says *where* the model is, since Plano ran its own)::

    prompt_guards:
      input_guards:
        jailbreak:
          on_exception:
            message: "I can't help with that request."
    plano_fast:
      guard_models:
        jailbreak:                       # required when prompt_guards has jailbreak
          url: http://guard:8000/guard   # Plano model_server shape, see below
          threshold: 0.5                 # jailbreak_prob at or above it blocks (absent: the verdict)
          timeout_ms: 500
          on_error: fail_closed          # or fail_open: forwarded when the guard cannot answer
        moderation:                      # an OpenAI-moderations-compatible endpoint
          url: https://api.openai.com/v1/moderations
          model: omni-moderation-latest
          api_key: $OPENAI_API_KEY
          threshold: 0.8                 # any category score at or above it (absent: ``flagged``)
          categories: [violence, hate]   # only these categories count (absent: all)
          message: "This request was blocked by content moderation."
          timeout_ms: 1000
          on_error: fail_open
          provider: openai               # the usage row's provider (default: "guard")

The jailbreak guard is called as Plano's model_server was: ``POST {"input": text, "task":
"jailbreak"}`` answered with ``{"jailbreak_prob": p, "jailbreak_verdict": bool}``.  Both
guards see the text of the request's latest user turn (plano_fast.guardrails' message text
of that turn) and are asked concurrently.  A blocked request is a 403 in the client's
format whose message is ``on_exception.message`` (``message`` for moderation) and whose
``x-plano-guardrail`` header says ``jailbreak`` or ``moderation:<categories>``; nothing is
forwarded.  A guard that times out, cannot be reached or answers garbage follows its
``on_error``: ``fail_closed`` (default) answers 503 ``guardrail_unavailable``, ``fail_open``
forwards; both are counted.  When a guard's answer reports ``usage`` (OpenAI or Anthropic
field names), its tokens are billed to the caller as an overhead row whose request id is
the request's + ``-guard-jailbreak`` / ``-guard-moderation`` (as preference routing's
``-router`` row).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plano_fast import guardrails
from plano_fast.errors import ClientError, GatewayError, UpstreamError
from plano_fast.http_post import Target, parse_target, post
from plano_fast.usage import STATUS_OK, UsageEvent

if TYPE_CHECKING:
    from plano_fast.metrics import RequestMetrics
    from plano_fast.upstream import UpstreamPool
    from plano_fast.usage import UsageSink

GUARD_KINDS: Final = ("jailbreak", "moderation")
ROW_SUFFIX: Final = "-guard-"
DEFAULT_MODERATION_MESSAGE: Final = "the request was blocked by the gateway's content moderation"
_FIELDS: Final = frozenset({"url", "threshold", "timeout_ms", "on_error", "model", "api_key",
                            "categories", "message", "provider"})  # fmt: skip


class GuardConfigError(ValueError):
    """A guard model or filter config error; the message starts with the field path."""


class GuardBlocked(ClientError):
    status = 403
    code = "guardrail_blocked"
    openai_type = "permission_error"

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)

    def headers(self, fmt: Any) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"x-plano-guardrail", self.reason.encode()),)


class GuardUnavailable(GatewayError):
    """A fail_closed guard could not answer: nothing is forwarded unchecked."""

    status = 503
    code = "guardrail_unavailable"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"the gateway's {kind} guard is unavailable; the request was not forwarded")

    def headers(self, fmt: Any) -> tuple[tuple[bytes, bytes], ...]:
        return ((b"x-plano-guardrail", f"{self.kind}:unavailable".encode()),)


@dataclass(frozen=True, slots=True)
class GuardModel:
    kind: str  # "jailbreak" | "moderation"
    target: Target
    message: str
    timeout_s: float
    fail_open: bool
    threshold: float | None = None
    model: str | None = None
    categories: frozenset[str] | None = None
    provider: str = "guard"
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _number(value: object, loc: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
        high is not None and value > high
    ):
        bound = f"between {low} and {high}" if high is not None else f"a number >= {low}"
        raise GuardConfigError(f"{loc}: {bound} (got {value!r})")
    return float(value)


def _on_error(value: object, loc: str) -> bool:
    """``on_error`` -> fail_open."""
    if value not in (None, "fail_open", "fail_closed"):
        raise GuardConfigError(f"{loc}: fail_open or fail_closed (got {value!r})")
    return value == "fail_open"


def parse_guards(prompt_guards: object, guard_models: object) -> tuple[GuardModel, ...]:
    """Plano's ``prompt_guards`` and ``plano_fast.guard_models`` -> the guards to ask
    (empty: none); GuardConfigError naming the field."""
    where = "plano_fast.guard_models"
    if guard_models is not None and not isinstance(guard_models, dict):
        raise GuardConfigError(f"{where}: expected a mapping (jailbreak, moderation)")
    models: dict[str, Any] = guard_models or {}
    for kind in models:
        if kind not in GUARD_KINDS:
            raise GuardConfigError(f"{where}.{kind}: unknown guard (jailbreak, moderation)")
    jailbreak = None
    if isinstance(prompt_guards, dict):
        jailbreak = (prompt_guards.get("input_guards") or {}).get("jailbreak")
    out: list[GuardModel] = []
    if jailbreak is not None:
        message = str(((jailbreak.get("on_exception") or {}).get("message")) or "")
        if "jailbreak" not in models:
            raise GuardConfigError(
                "prompt_guards.input_guards.jailbreak: no guard model to ask; set "
                f"{where}.jailbreak.url (Plano ran Arch-Guard itself; plano_fast calls yours)"
            )
        out.append(_guard("jailbreak", models["jailbreak"], f"{where}.jailbreak", message))
    elif "jailbreak" in models:
        raise GuardConfigError(
            f"{where}.jailbreak: set prompt_guards.input_guards.jailbreak.on_exception.message "
            "too (Plano's switch for the guard and what the client is told)"
        )
    if "moderation" in models:
        raw = models["moderation"]
        said = raw.get("message") if isinstance(raw, dict) else None
        text = str(said) if said else DEFAULT_MODERATION_MESSAGE
        out.append(_guard("moderation", raw, f"{where}.moderation", text))
    return tuple(out)


def _guard(kind: str, raw: object, loc: str, message: str) -> GuardModel:
    if not isinstance(raw, dict):
        raise GuardConfigError(f"{loc}: expected a mapping with url")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise GuardConfigError(f"{loc}.{unknown[0]}: unknown field ({', '.join(sorted(_FIELDS))})")
    if not isinstance(raw.get("url"), str):
        raise GuardConfigError(f"{loc}.url: the guard model's URL is required")
    try:
        target = parse_target(raw["url"])
    except ValueError as exc:
        raise GuardConfigError(f"{loc}.url: {exc}") from None
    threshold = raw.get("threshold")
    categories = raw.get("categories")
    if categories is not None and (
        kind != "moderation" or not isinstance(categories, list) or not all(isinstance(c, str) for c in categories)
    ):
        raise GuardConfigError(f"{loc}.categories: a list of moderation category names")
    headers: tuple[tuple[bytes, bytes], ...] = ()
    key = raw.get("api_key")
    if key is not None:
        if not isinstance(key, str) or not key or any(c in key for c in "\r\n"):
            raise GuardConfigError(f"{loc}.api_key: a non-empty string")
        headers = ((b"authorization", b"Bearer " + key.encode()),)
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise GuardConfigError(f"{loc}.model: a model name")
    return GuardModel(
        kind=kind,
        target=target,
        message=message,
        timeout_s=_number(raw.get("timeout_ms", 1000), f"{loc}.timeout_ms", 1) / 1000,
        fail_open=_on_error(raw.get("on_error"), f"{loc}.on_error"),
        threshold=None if threshold is None else _number(threshold, f"{loc}.threshold", 0, 1),
        model=model,
        categories=frozenset(categories) if categories is not None else None,
        provider=str(raw.get("provider") or "guard"),
        headers=headers,
    )


# -- what a guard reads ----------------------------------------------------------------------


def latest_user_text(doc: Any, fmt: str) -> list[str]:
    """The message text of the request's latest user turn (its system prompt and earlier
    turns are the operator's and the conversation's: judged when they were new)."""
    if not isinstance(doc, dict):
        return []
    last: Any = None
    if fmt == "gemini":
        for content in doc.get("contents") or []:
            if isinstance(content, dict) and content.get("role", "user") == "user":
                last = content
        probe: Any = {"contents": [last]}
    elif fmt == "responses":
        if isinstance(doc.get("input"), str):
            return [doc["input"]]
        for item in doc.get("input") or []:
            if isinstance(item, dict) and item.get("role") == "user":
                last = item
        probe = {"input": [last]}
    elif fmt == "embeddings":
        probe = doc
    else:
        for message in doc.get("messages") or []:
            if isinstance(message, dict) and message.get("role") == "user":
                last = message
        probe = {"messages": [last]}
    return [c[k] for c, k in guardrails.text_slots(probe, fmt) if c[k]]


# -- asking -------------------------------------------------------------------------------------


class GuardAnswerError(Exception):
    pass


def _usage(answer: dict[str, Any]) -> tuple[int, int] | None:
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        return None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(inp, int) or not isinstance(out, int):
        return None
    return inp, out


def request_body(guard: GuardModel, texts: list[str]) -> bytes:
    if guard.kind == "jailbreak":
        doc: dict[str, Any] = {"input": "\n".join(texts), "task": "jailbreak"}
    else:
        doc = {"input": texts}
        if guard.model:
            doc["model"] = guard.model
    return json.dumps(doc, ensure_ascii=False).encode()


def verdict(guard: GuardModel, answer: Any) -> str | None:
    """The reason to block (the ``x-plano-guardrail`` value), None to let it through;
    GuardAnswerError when the answer is not the expected shape."""
    if not isinstance(answer, dict):
        raise GuardAnswerError("not a JSON object")
    if guard.kind == "jailbreak":
        prob, flag = answer.get("jailbreak_prob"), answer.get("jailbreak_verdict")
        if guard.threshold is not None:
            if isinstance(prob, bool) or not isinstance(prob, int | float):
                raise GuardAnswerError("no jailbreak_prob")
            return "jailbreak" if prob >= guard.threshold else None
        if not isinstance(flag, bool):
            raise GuardAnswerError("no jailbreak_verdict")
        return "jailbreak" if flag else None
    results = answer.get("results")
    if not isinstance(results, list):
        raise GuardAnswerError("no results")
    hit: set[str] = set()
    for result in results:
        if not isinstance(result, dict):
            raise GuardAnswerError("a result is not an object")
        wanted = guard.categories
        if guard.threshold is not None:
            scores = result.get("category_scores") or {}
            hit |= {c for c, s in scores.items() if isinstance(s, int | float) and s >= guard.threshold
                    and (wanted is None or c in wanted)}  # fmt: skip
        elif wanted is not None:
            hit |= {c for c, v in (result.get("categories") or {}).items() if v is True and c in wanted}
        elif result.get("flagged") is True:
            hit |= {c for c, v in (result.get("categories") or {}).items() if v is True} or {"flagged"}
    if not hit:
        return None
    # category names are the moderation API's vocabulary ("hate/threatening"): header-safe
    names = ",".join(sorted(c for c in hit if c.isascii() and c.isprintable()))
    return f"moderation:{names}"


class Guards:
    """The configured guard models of one gateway: asked concurrently per request."""

    __slots__ = ("guards", "pool", "usage_sink", "metrics", "calls", "failures")

    def __init__(
        self,
        guards: tuple[GuardModel, ...],
        pool: UpstreamPool,
        usage_sink: UsageSink | None,
        metrics: RequestMetrics,
    ) -> None:
        self.guards = guards
        self.pool = pool
        self.usage_sink = usage_sink
        self.metrics = metrics
        self.calls = 0
        self.failures = 0

    async def check(self, texts: list[str], billing: tuple[str, str | None]) -> None:
        """Raise GuardBlocked / GuardUnavailable, or return: the request may go on."""
        if not texts:
            return
        outcomes = await asyncio.gather(*(self._ask(g, texts, billing) for g in self.guards))
        unavailable = None
        for guard, reason in zip(self.guards, outcomes):
            if reason is None:
                continue
            if reason == "":  # the guard could not answer
                if not guard.fail_open and unavailable is None:
                    unavailable = guard.kind
                continue
            self.metrics.detected(((guard.kind, "block"),))
            raise GuardBlocked(guard.message, reason)
        if unavailable is not None:
            raise GuardUnavailable(unavailable)

    async def _ask(self, guard: GuardModel, texts: list[str], billing: tuple[str, str | None]) -> str | None:
        """The block reason, None (passed), or "" (no usable answer)."""
        self.calls += 1
        started = time.perf_counter()
        status = 0
        answer: Any = None
        try:
            status, body = await post(
                self.pool, guard.target, request_body(guard, texts), guard.timeout_s, headers=guard.headers
            )
            if status != 200:
                raise GuardAnswerError(f"HTTP {status}")
            answer = json.loads(body)
            return verdict(guard, answer)
        except (TimeoutError, UpstreamError, OSError, ValueError, GuardAnswerError):
            self.failures += 1
            self.metrics.detected(((guard.kind, "fail_open" if guard.fail_open else "fail_closed"),))
            return ""
        finally:
            if status and isinstance(answer, dict):
                self._bill(guard, billing, status, _usage(answer), (time.perf_counter() - started) * 1000)

    def _bill(self, guard: GuardModel, billing: tuple[str, str | None], status: int,
              tokens: tuple[int, int] | None, ms: float) -> None:  # fmt: skip
        """The guard call's own usage row, when it reported tokens: billed to the same
        caller, tagged as overhead by its request id suffix."""
        sink = self.usage_sink
        if sink is None or tokens is None:
            return
        sink(UsageEvent(
            request_id=billing[0] + ROW_SUFFIX + guard.kind,
            time_ns=time.time_ns(),
            provider=guard.provider,
            model=guard.model or guard.kind,
            streaming=False,
            status=STATUS_OK,
            http_status=status,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            has_usage=True,
            key_hash=billing[1],
            duration_ms=ms,
        ))  # fmt: skip
