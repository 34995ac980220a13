"""The request path's UsageEvent constructor (plano_fast.usage.new_usage_event: compiled in
plano_fast/_usage_event.pyx where built) against the dataclass's own ``__init__``, on
generated field values: the same class, every field the same object, the same equality,
repr and pickling; and the relay's call site uses it."""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plano_fast import usage
from plano_fast.usage import UsageEvent

try:
    from plano_fast import _usage_event as _compiled
except ImportError:  # the extension is not built: new_usage_event is the class itself
    _compiled = None  # type: ignore[assignment]

if os.environ.get("PLANO_FAST_REQUIRE_EXTENSION") == "1":
    assert _compiled is not None, "the compiled UsageEvent constructor was not built"
    assert usage.new_usage_event is _compiled.new_usage_event

CONSTRUCTORS: list[Any] = [UsageEvent] + ([_compiled.new_usage_event] if _compiled is not None else [])
VALUE = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False), st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(VALUE, min_size=31, max_size=31))
def test_every_field_lands_where_the_dataclass_puts_it(values: list[Any]) -> None:
    names = [f.name for f in dataclasses.fields(UsageEvent)]
    assert len(names) == len(values)
    reference = UsageEvent(*values)
    for make in CONSTRUCTORS:
        event = make(*values)
        assert type(event) is UsageEvent
        assert all(getattr(event, n) is getattr(reference, n) for n in names)
        assert event == reference and repr(event) == repr(reference)
        assert pickle.loads(pickle.dumps(event)) == reference


def test_the_relay_builds_its_events_with_it() -> None:
    import inspect

    from plano_fast.gateway import relay

    assert relay.new_usage_event is usage.new_usage_event
    assert "return new_usage_event(" in inspect.getsource(relay.Exchange.make_event)


def test_compiled_events_of_scalars_leave_the_cyclic_gc() -> None:
    """Events wait for the flush by the hundred: the compiled constructor takes one whose
    fields are all scalars out of the cyclic GC (nothing it refers to can close a cycle),
    and leaves one that holds anything else tracked.  Fields set later stay scalars."""
    import gc

    if _compiled is None:
        return
    values: list[Any] = ["r", 1, "openai", "m", False, "ok", 200, 1, 2, 0, 0, 0, True, "p", "k", None, None,
                         1.5, "openai", 0, 0, 0, 0, "{}", "chat", 0, None, 1, None, None, 0]  # fmt: skip
    event = _compiled.new_usage_event(*values)
    assert not gc.is_tracked(event) and event == UsageEvent(*values)
    event.status, event.output_tokens = "client_disconnected", 7  # as the relay's settle does
    assert event == UsageEvent(*values[:5], "client_disconnected", 200, 1, 7, *values[9:])
    for i, other in ((23, ["raw"]), (3, b"model"), (17, 1 + 2j)):  # a container, bytes, another type
        held = values.copy()
        held[i] = other
        assert gc.is_tracked(_compiled.new_usage_event(*held)), i
