# cython: language_level=3
"""The settle step's two methods compiled, ``Exchange.make_event`` and ``Exchange.observe``:
the twins of ``plano_fast.gateway.relay.make_event_py`` and ``observe_py`` (installed as
the methods by ``relay``).

``make_event``: every settled request builds its usage event here, and the Python method is ~9.8k
instructions (callgrind, firewall, issue 27): ~20 slot reads of the exchange, 13 attribute
reads of the scanner's ``Usage`` through the generic getattr path (~2.3k), the 30-argument
call of ``new_usage_event`` with its argument parsing (~1.6k) and a frame.  Here the
exchange's slots are read in place (``plano_fast/_slots.pxd``), the counts and the raw
usage come as one tuple (``UsageScanner.usage_fields()``), the duration is C arithmetic
and the event is built by a C call (``_usage_event.pxd``).  The uncommon paths are the
twin's: no scanner (a request that is not metered) and a retried request (its attempt
trail).

``observe``: the request's metrics and access-log record from its event, ~5.5k
instructions as a Python method (~1.4k of them the metrics' own compiled accumulator):
here the exchange's, the context's and the event's slots are read in place.  A request
counted against rate limits goes to the twin (``rl_buckets``).  A sampled request's spans
end here as the twin ends them (``spans.end_attempt``, ``spans.end_server``, compiled where
built: ``plano_fast/_spans.pyx``), in the twin's order: it went to the twin before, ~5k
instructions more a traced request (issue 27's tracing row).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromLongLong
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t

from plano_fast._clock cimport now_ns as _now_ns
from plano_fast._slots cimport get_slot, slot_offset, slot_or_attr as _slot
from plano_fast._usage_event cimport new_event

from plano_fast import spans as _spans
from plano_fast import wire as _wire
from plano_fast.gateway import relay
from plano_fast.gateway.relay import Exchange, ExchangeContext
from plano_fast.metrics import RequestMetrics, provider_error_type
from plano_fast.usage import (
    STATUS_OK,
    STATUS_UPSTREAM_ERROR,
    STATUS_UPSTREAM_FAILED,
    USAGE_API_NAMES,
    UsageEvent,
)

cdef Py_ssize_t O_STARTED = slot_offset(Exchange, "started_ns")
cdef Py_ssize_t O_SCANNER = slot_offset(Exchange, "scanner")
cdef Py_ssize_t O_FAILED = slot_offset(Exchange, "failed_attempts")
cdef Py_ssize_t O_ATTEMPTS = slot_offset(Exchange, "attempts")
cdef Py_ssize_t O_ID = slot_offset(Exchange, "request_id")
cdef Py_ssize_t O_PROVIDER = slot_offset(Exchange, "provider_id")
cdef Py_ssize_t O_MODEL = slot_offset(Exchange, "model")
cdef Py_ssize_t O_STREAMING = slot_offset(Exchange, "streaming")
cdef Py_ssize_t O_PROJECT = slot_offset(Exchange, "project_id")
cdef Py_ssize_t O_KEY_HASH = slot_offset(Exchange, "key_hash")
cdef Py_ssize_t O_WIRE_FORMAT = slot_offset(Exchange, "wire_format")
cdef Py_ssize_t O_SCAN_API = slot_offset(Exchange, "scan_api")
cdef Py_ssize_t O_REQUESTED = slot_offset(Exchange, "requested_model")

cdef Py_ssize_t O_CTX = slot_offset(Exchange, "ctx")
cdef Py_ssize_t O_RL_BUCKETS = slot_offset(Exchange, "rl_buckets")
cdef Py_ssize_t O_SPAN = slot_offset(Exchange, "span")
cdef Py_ssize_t O_ATTEMPT_SPAN = slot_offset(Exchange, "attempt_span")
cdef Py_ssize_t O_SENT = slot_offset(Exchange, "sent_ns")
cdef Py_ssize_t O_HEAD = slot_offset(Exchange, "head_ns")
cdef Py_ssize_t O_ENDPOINT = slot_offset(Exchange, "endpoint_name")
cdef Py_ssize_t O_RESPONDER = slot_offset(Exchange, "responder")
cdef Py_ssize_t O_GUARD_NAMES = slot_offset(Exchange, "guard_names")
cdef Py_ssize_t O_ROUTE_NAME = slot_offset(Exchange, "route_name")

cdef Py_ssize_t C_REQUEST_METRICS = slot_offset(ExchangeContext, "request_metrics")
cdef Py_ssize_t C_METRICS = slot_offset(ExchangeContext, "metrics")
cdef Py_ssize_t C_ACCESS_LOG = slot_offset(ExchangeContext, "access_log")

cdef Py_ssize_t E_PROVIDER = slot_offset(UsageEvent, "provider")
cdef Py_ssize_t E_MODEL = slot_offset(UsageEvent, "model")
cdef Py_ssize_t E_STATUS = slot_offset(UsageEvent, "status")
cdef Py_ssize_t E_HTTP_STATUS = slot_offset(UsageEvent, "http_status")
cdef Py_ssize_t E_INPUT = slot_offset(UsageEvent, "input_tokens")
cdef Py_ssize_t E_OUTPUT = slot_offset(UsageEvent, "output_tokens")
cdef Py_ssize_t E_CACHE_READ = slot_offset(UsageEvent, "cache_read_tokens")
cdef Py_ssize_t E_CACHE_WRITE = slot_offset(UsageEvent, "cache_write_tokens")
cdef Py_ssize_t E_REASONING = slot_offset(UsageEvent, "reasoning_tokens")
cdef Py_ssize_t E_HAS_USAGE = slot_offset(UsageEvent, "has_usage")
cdef Py_ssize_t E_ATTEMPTS = slot_offset(UsageEvent, "attempts")
cdef Py_ssize_t E_TRAIL = slot_offset(UsageEvent, "attempt_trail")

cdef Py_ssize_t M_KNOWN = slot_offset(RequestMetrics, "known_models")

cdef type _Exchange = Exchange
cdef type _Scanner = _wire.UsageScanner  # (the compiled one where built: usage_fields)
cdef type _Metrics = RequestMetrics
cdef str _OK = STATUS_OK
if _OK in relay._FAILED_OUTCOMES:
    raise ImportError("STATUS_OK is a failed outcome: _settle.pyx's shortcut is wrong")
cdef type _Context = ExchangeContext
cdef type _Event = UsageEvent
cdef dict _API_NAMES = USAGE_API_NAMES
cdef frozenset _FAILED = relay._FAILED_OUTCOMES
cdef object _twin = relay.make_event_py
cdef object _observe_twin = relay.observe_py


def make_event(self, outcome, http_status):
    """``make_event_py(self, outcome, http_status)``: the usage event of an exchange."""
    if not isinstance(self, _Exchange):
        raise TypeError("not an Exchange")
    scanner = _slot(self, O_SCANNER, "scanner")
    if scanner is None or _slot(self, O_FAILED, "failed_attempts") is not None:
        return _twin(self, outcome, http_status)
    started_ns = _slot(self, O_STARTED, "started_ns")
    # (the twin's ``(time.time_ns() - started_ns) / 1e6``: an int converted to a double, divided)
    cdef double duration_ms = <double>(_now_ns() - <int64_t>started_ns) / 1e6
    if type(scanner) is _Scanner:
        fields = scanner.usage_fields()  # (one call for the three below)
    else:
        fields = scanner.result()._key() + (scanner.raw_usage(),)
    (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage, model,
     _is_error, tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens,
     audio_output_tokens, web_search_requests, service_tier, image_output_tokens, audio_cache_read_tokens,
     raw) = fields
    if not model:
        model = _slot(self, O_MODEL, "model")
    if raw is None:
        usage_raw = None
    elif type(raw) is bytes:
        usage_raw = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), "replace")
    else:
        usage_raw = raw.decode("utf-8", "replace")
    return new_event(
        _slot(self, O_ID, "request_id"), started_ns, _slot(self, O_PROVIDER, "provider_id"), model,
        _slot(self, O_STREAMING, "streaming"), outcome, http_status, input_tokens, output_tokens,
        cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage, _slot(self, O_PROJECT, "project_id"),
        _slot(self, O_KEY_HASH, "key_hash"), None, None, duration_ms, _slot(self, O_WIRE_FORMAT, "wire_format"),
        tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens, audio_output_tokens, usage_raw,
        _API_NAMES.get(_slot(self, O_SCAN_API, "scan_api")), 0, _slot(self, O_REQUESTED, "requested_model"),
        1 if _slot(self, O_ATTEMPTS, "attempts") else 0, None, None, web_search_requests, service_tier,
        image_output_tokens, audio_cache_read_tokens,
    )


def observe(self, event):
    """``observe_py(self, event)``: add this finished request to the process's metrics and
    its access log."""
    if not isinstance(self, _Exchange):
        raise TypeError("not an Exchange")
    ctx = _slot(self, O_CTX, "ctx")
    if type(event) is not _Event or type(ctx) is not _Context or _slot(self, O_RL_BUCKETS, "rl_buckets") is not None:
        return _observe_twin(self, event)
    now_ns = PyLong_FromLongLong(_now_ns())
    started_ns = _slot(self, O_STARTED, "started_ns")
    sent_ns = _slot(self, O_SENT, "sent_ns")
    head_ns = _slot(self, O_HEAD, "head_ns")
    mode = type(self).MODE
    cdef PyObject *known
    has_usage = _slot(event, E_HAS_USAGE, "has_usage")
    provider = _slot(event, E_PROVIDER, "provider")
    http_status = _slot(event, E_HTTP_STATUS, "http_status")
    status = _slot(event, E_STATUS, "status")
    endpoint_name = _slot(self, O_ENDPOINT, "endpoint_name")
    streaming = _slot(self, O_STREAMING, "streaming")
    if _slot(ctx, C_REQUEST_METRICS, "request_metrics"):
        metrics = _slot(ctx, C_METRICS, "metrics")
        model = _slot(event, E_MODEL, "model")
        # (the metrics' set of known models read in place: an attribute lookup less)
        known = get_slot(metrics, M_KNOWN) if type(metrics) is _Metrics else NULL
        if model not in (<object>known if known != NULL else metrics.known_models):
            model = metrics.model_label(model)
        metrics.observe_ns(
            (mode, provider, model, endpoint_name), http_status, started_ns, now_ns, sent_ns,
            head_ns if streaming else 0,
            (_slot(event, E_INPUT, "input_tokens"), _slot(event, E_OUTPUT, "output_tokens"),
             _slot(event, E_CACHE_READ, "cache_read_tokens"), _slot(event, E_CACHE_WRITE, "cache_write_tokens"),
             _slot(event, E_REASONING, "reasoning_tokens")) if has_usage else None,
        )
        if status is not _OK and status in _FAILED:  # (an answered request: no set lookup)
            if status == STATUS_UPSTREAM_FAILED:
                metrics.error("timeout" if http_status == 504 else "upstream")
            elif status == STATUS_UPSTREAM_ERROR:
                metrics.error(provider_error_type(http_status))
            else:
                metrics.error("client_gone")
    failed = _slot(self, O_FAILED, "failed_attempts")
    if failed is not None:
        ctx.requests_retried += 1
        ctx.attempts_failed += len(failed)
    span = _slot(self, O_SPAN, "span")
    if span is not None:  # (sampled: its spans end, the module's functions called positionally)
        attempt_span = _slot(self, O_ATTEMPT_SPAN, "attempt_span")
        if attempt_span is not None:
            _spans.end_attempt(attempt_span, http_status)
            self.attempt_span = None
        _spans.end_server(
            span, mode, endpoint_name, _slot(self, O_ID, "request_id"), provider, _slot(self, O_MODEL, "model"),
            _slot(event, E_MODEL, "model"), status, http_status,
            (_slot(event, E_INPUT, "input_tokens"), _slot(event, E_OUTPUT, "output_tokens")) if has_usage else None,
        )
        self.span = None
    access_log = _slot(ctx, C_ACCESS_LOG, "access_log")
    if access_log is not None:
        responder = _slot(self, O_RESPONDER, "responder")
        responder.logged = True  # a refusal answered after this settle adds no line
        access_log.record((
            started_ns, _slot(self, O_ID, "request_id"), mode, _slot(self, O_PROJECT, "project_id"),
            _slot(self, O_KEY_HASH, "key_hash"), provider, _slot(event, E_MODEL, "model"), endpoint_name,
            http_status, status, streaming, _slot(event, E_INPUT, "input_tokens"),
            _slot(event, E_OUTPUT, "output_tokens"), _slot(event, E_CACHE_READ, "cache_read_tokens"),
            _slot(event, E_REASONING, "reasoning_tokens"), now_ns, head_ns, sent_ns,
            _slot(event, E_ATTEMPTS, "attempts"), responder.peer(), _slot(self, O_GUARD_NAMES, "guard_names"),
            _slot(self, O_ROUTE_NAME, "route_name"), _slot(event, E_TRAIL, "attempt_trail"),
        ))


# Last: what the twins' module asked to install while this one was half-imported (this
# module imported first: plano_fast.twins).
from plano_fast.twins import install_deferred as _install_deferred
_install_deferred(__name__)
