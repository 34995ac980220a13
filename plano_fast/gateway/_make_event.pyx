# cython: language_level=3
"""``Exchange.make_event`` compiled: the twin of ``plano_fast.gateway.relay.make_event_py``
(installed as the method by ``relay``).

Why: every settled request builds its usage event here, and the Python method is ~9.8k
instructions (callgrind, firewall, issue 27): ~20 slot reads of the exchange, 13 attribute
reads of the scanner's ``Usage`` through the generic getattr path (~2.3k), the 30-argument
call of ``new_usage_event`` with its argument parsing (~1.6k) and a frame.  Here the
exchange's slots are read in place (``plano_fast/_slots.pxd``), the counts come as one
tuple (``Usage._key()``), the duration is C arithmetic and the event is built by a C call
(``_usage_event.pxd``).  The uncommon paths are the twin's: no scanner (a request that is
not metered) and a retried request (its attempt trail).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from plano_fast._slots cimport get_slot, slot_offset
from plano_fast._usage_event cimport new_event

from plano_fast.gateway import relay
from plano_fast.gateway.relay import Exchange
from plano_fast.usage import USAGE_API_NAMES

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

cdef type _Exchange = Exchange
cdef dict _API_NAMES = USAGE_API_NAMES
cdef object _twin = relay.make_event_py


cdef inline object _slot(object exchange, Py_ssize_t offset, str name):
    """The slot at ``offset``; an unset one raises as the attribute read would."""
    cdef PyObject *value = get_slot(exchange, offset)
    if value == NULL:
        return getattr(exchange, name)
    return <object>value


def make_event(self, outcome, http_status):
    """``make_event_py(self, outcome, http_status)``: the usage event of an exchange."""
    if not isinstance(self, _Exchange):
        raise TypeError("not an Exchange")
    scanner = _slot(self, O_SCANNER, "scanner")
    if scanner is None or _slot(self, O_FAILED, "failed_attempts") is not None:
        return _twin(self, outcome, http_status)
    started_ns = _slot(self, O_STARTED, "started_ns")
    cdef timespec now
    clock_gettime(CLOCK_REALTIME, &now)  # time.time_ns()'s clock
    # (the twin's ``(time.time_ns() - started_ns) / 1e6``: an int converted to a double, divided)
    cdef double duration_ms = <double>(<int64_t>now.tv_sec * 1000000000 + now.tv_nsec - <int64_t>started_ns) / 1e6
    (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage, model,
     _is_error, tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens,
     audio_output_tokens) = scanner.result()._key()
    if not model:
        model = _slot(self, O_MODEL, "model")
    raw = scanner.raw_usage()
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
        1 if _slot(self, O_ATTEMPTS, "attempts") else 0, None, None,
    )
