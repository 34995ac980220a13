# cython: language_level=3
"""A sampled request's span records made and ended compiled: the twins of
``plano_fast.spans.end_attempt_py`` / ``end_server_py`` (installed as ``spans.end_attempt`` /
``spans.end_server`` by that module) and of ``plano_fast.tracing.Tracing``'s
``may_sample`` / ``sample`` / ``start_server`` / ``start_attempt`` (``may_sample_py`` ...
in that module, installed over the methods by it).

Why: a traced request ran ~20 Python calls of records (two ``TraceSpan``s, their attribute
dicts, the two ends): ~36k instructions of its +110k (``benchmarks.bench_tracing_parts``,
issue 27).  Here the same steps run in the twins' order with the same side effects: the
records are made without their ``__init__`` frame (``_slots.new_instance``, the slots
written in place), an attribute set where ``TraceSpan.set_attribute`` /
``set_attributes``' plain case holds (not ended, no length limit, room under the count
limit, a new key) is a dict write, the end a slot write and the owner's ``on_end``.
Anything else -- a subclass of ``TraceSpan`` or ``SpanOwner``, a key already set, a limit
reached, header attributes to copy, a client's ``traceparent`` to read -- is the twin's
code, called before any side effect of this pass (or, for one attribute, the record's own
``set_attribute``).  The clock and the id draws are the twins' (``time_ns`` read from the
twin's module each call, so a test's clock holds for both builds; ``random.getrandbits``).
"""

import random
import sys

from plano_fast._slots cimport new_instance, put_slot, slot_offset, slot_or_attr as _get

from plano_fast import spans as _spans
from plano_fast.spans import KIND_CLIENT, KIND_SERVER, OPERATIONS, SpanOwner, TraceSpan
from plano_fast.wire import has_header

include "_span_slots.pxi"
cdef Py_ssize_t O_MAX_ATTRIBUTES = slot_offset(SpanOwner, "max_attributes")
cdef Py_ssize_t O_MAX_LENGTH = slot_offset(SpanOwner, "max_length")
cdef Py_ssize_t O_ON_END = slot_offset(SpanOwner, "on_end")

cdef type _Owner = SpanOwner
cdef dict _OPERATIONS = OPERATIONS
cdef object _KIND_SERVER = KIND_SERVER
cdef object _KIND_CLIENT = KIND_CLIENT
#: the twins' module globals: ``time_ns`` read per call (a test's clock patches them)
cdef dict _spans_globals = _spans.__dict__
cdef dict _tracing_globals = None
cdef object _getrandbits = random.getrandbits
cdef object _has_header = has_header
cdef str _STATUS_CODE = "http.response.status_code"


cdef dict _tracing():
    """``plano_fast.tracing``'s globals (imported by then: a ``Tracing`` exists)."""
    global _tracing_globals
    if _tracing_globals is None:
        _tracing_globals = sys.modules["plano_fast.tracing"].__dict__
    return _tracing_globals


cdef bint _plain_owner(object owner, Py_ssize_t have, Py_ssize_t adding) except -1:
    """Whether ``adding`` new keys to a record holding ``have`` reach no limit of ``owner``
    (``TraceSpan.set_attribute``'s drop and cut never happen)."""
    if type(owner) is not _Owner or _get(owner, O_MAX_LENGTH, "max_length") is not None:
        return False
    limit = _get(owner, O_MAX_ATTRIBUTES, "max_attributes")
    return limit is None or have + adding <= limit


cdef inline bint _ended(object span) except -1:
    return bool(_get(span, S_END, "end_ns"))


cdef void _set_attribute(object span, str key, object value) except *:
    """``span.set_attribute(key, value)``: a dict write in the plain case."""
    attributes = _get(span, S_ATTRIBUTES, "attributes")
    if (not _ended(span) and type(attributes) is dict and key not in <dict>attributes
            and _plain_owner(_get(span, S_OWNER, "owner"), len(<dict>attributes), 1)):
        (<dict>attributes)[key] = value
    else:
        span.set_attribute(key, value)


cdef void _set_error(object span, object description) except *:
    if not _ended(span):
        put_slot(span, S_ERROR, description)


cdef void _end(object span, object end_ns) except *:
    """``span.end(end_ns)``: the stamp, then the owner's ``on_end`` (an ended record's
    warning is the method's)."""
    if _ended(span):
        span.end(end_ns)
        return
    put_slot(span, S_END, end_ns)
    owner = _get(span, S_OWNER, "owner")
    on_end = _get(owner, O_ON_END, "on_end") if type(owner) is _Owner else owner.on_end
    on_end(span)


def end_attempt(span, status, error=None):
    """``spans.end_attempt_py(span, status, error)``."""
    if type(span) is not _Span:
        return _spans.end_attempt_py(span, status, error)
    if status:
        _set_attribute(span, _STATUS_CODE, status)
    if error is not None or status >= 400 or not status:
        _set_error(span, error or f"HTTP {status}")
    _end(span, _spans_globals["time_ns"]())


def end_server(span, mode, endpoint, request_id, provider, request_model, response_model, outcome, status,
               tokens):
    """``spans.end_server_py(span, ...)``."""
    if type(span) is not _Span:
        return _spans.end_server_py(span, mode, endpoint, request_id, provider, request_model, response_model,
                                    outcome, status, tokens)
    operation = _OPERATIONS.get(endpoint)
    if operation is None:
        operation = endpoint or "chat"
    if not _ended(span):
        put_slot(span, S_NAME, f"{operation} {request_model or ''}".strip())
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model or "",
        "gen_ai.response.model": response_model or "",
        "http.response.status_code": status,
        "plano_fast.mode": mode,
        "plano_fast.request_id": request_id,
        "plano_fast.outcome": outcome,
    }
    if tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = tokens[0]
        attributes["gen_ai.usage.output_tokens"] = tokens[1]
    mine = _get(span, S_ATTRIBUTES, "attributes")
    if (not _ended(span) and type(mine) is dict
            and _plain_owner(_get(span, S_OWNER, "owner"), len(<dict>mine), len(attributes))
            and (<dict>mine).keys().isdisjoint(attributes)):
        (<dict>mine).update(attributes)  # (set_attributes' one update: no key empty here)
    else:
        span.set_attributes(attributes)
    if status >= 500 or outcome in ("upstream_failed",):
        _set_error(span, outcome)
    _end(span, _spans_globals["time_ns"]())


cdef object _new_span(object owner, object name, object kind, object trace_id, object span_id, object parent_id,
                      object remote_parent, object attributes, object dropped, object start_ns):
    """``TraceSpan(...)`` with no ``__init__`` frame: every slot its ``__init__`` sets."""
    span = new_instance(_Span)
    put_slot(span, S_OWNER, owner)
    put_slot(span, S_NAME, name)
    put_slot(span, S_KIND, kind)
    put_slot(span, S_TRACE_ID, trace_id)
    put_slot(span, S_SPAN_ID, span_id)
    put_slot(span, S_PARENT_ID, parent_id)
    put_slot(span, S_REMOTE, remote_parent)
    put_slot(span, S_ATTRIBUTES, attributes)
    put_slot(span, S_DROPPED, dropped)
    put_slot(span, S_START, start_ns)
    put_slot(span, S_END, 0)
    put_slot(span, S_ERROR, None)
    return span


cdef object _id(int bits, dict tracing):
    """``_getrandbits(bits) or _new_id(bits)``."""
    value = _getrandbits(bits)
    return value if value else tracing["_new_id"](bits)


def may_sample(self, headers):
    """``Tracing.may_sample_py``."""
    return self.rate > 0 or _has_header(headers, b"traceparent")


def sample(self, headers):
    """``Tracing.sample_py``: a client's ``traceparent`` is read by the twin."""
    if self.disabled:
        return False
    if _has_header(headers, b"traceparent"):
        return _tracing()["sample_py"](self, headers)
    rate = self.rate
    return rate > 0 and self._random() < rate


def start_server(self, decision, headers, path):
    """``Tracing.start_server_py``: header attributes to copy are the twin's."""
    if self.header_prefixes:
        return _tracing()["start_server_py"](self, decision, headers, path)
    cdef dict tracing = _tracing()
    if isinstance(decision, tuple):
        trace_id, parent_id = decision
    else:
        trace_id, parent_id = _id(128, tracing), 0
    name = path.decode("latin-1")
    span_id = _id(64, tracing)
    return _new_span(self.owner, name, _KIND_SERVER, trace_id, span_id, parent_id, bool(parent_id),
                     self._start_attributes.copy(), self._start_dropped, tracing["time_ns"]())


def start_attempt(self, server, provider, model):
    """``Tracing.start_attempt_py``: attribute limits to apply are the twin's."""
    if not self._plain:
        return _tracing()["start_attempt_py"](self, server, provider, model)
    cdef dict tracing = _tracing()
    attributes = {"gen_ai.provider.name": provider, "gen_ai.request.model": model or ""}
    name = f"upstream {provider}"
    trace_id = server.trace_id
    span_id = _id(64, tracing)
    return _new_span(self.owner, name, _KIND_CLIENT, trace_id, span_id, server.span_id, False, attributes, 0,
                     tracing["time_ns"]())


# Last: what the twins' module asked to install while this one was half-imported.
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
