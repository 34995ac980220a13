# cython: language_level=3
"""``UsageEvent(*fields)`` for the request path, compiled: the twin of the dataclass's own
constructor, chosen in ``plano_fast.usage`` (``new_usage_event``).

Why: the relay builds one ``UsageEvent`` per request with all 34 fields positional; the
dataclass's ``__init__`` is a Python frame of 29 stores (~5.6k instructions, callgrind,
issue 27; Python 3.11 does not specialize a call to a class with a Python ``__init__``).
Here the instance is allocated and its slots written in place (``plano_fast/_slots.pxd``)
in one C call, ~1k.  UsageEvent has no ``__post_init__``, defaults or conversions that a
positional call with every field could skip: the instance is the one ``__init__`` makes
(tests/test_usage_event_twins.py compares them field by field).
"""

import dataclasses

from plano_fast._slots cimport new_instance, put_slot, slot_offset, untrack_if_scalars

from plano_fast.usage import UsageEvent

FIELDS = tuple(f.name for f in dataclasses.fields(UsageEvent))
DEF N = 34
if len(FIELDS) != N or hasattr(UsageEvent, "__post_init__"):
    raise ImportError("UsageEvent changed: _usage_event.pyx must be updated (its constructor is used)")

cdef Py_ssize_t OFF[N]
for _i in range(N):
    OFF[_i] = slot_offset(UsageEvent, FIELDS[_i])

cdef type _Event = UsageEvent


def new_usage_event(request_id, time_ns, provider, model, streaming, status, http_status, input_tokens,
                    output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage,
                    project_id, key_hash, user_id, token_id, duration_ms, wire_format, tool_use_prompt_tokens,
                    cache_write_1h_tokens, audio_input_tokens, audio_output_tokens, usage_raw, usage_api,
                    reservation_overrun_nano_usd, requested_model, attempts, attempt_trail,
                    bound_cost_nano_usd, web_search_requests, service_tier, image_output_tokens,
                    audio_cache_read_tokens):
    """``UsageEvent(...)`` of every field, positional, in field order."""
    return new_event(request_id, time_ns, provider, model, streaming, status, http_status, input_tokens,
                     output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage,
                     project_id, key_hash, user_id, token_id, duration_ms, wire_format,
                     tool_use_prompt_tokens, cache_write_1h_tokens, audio_input_tokens, audio_output_tokens,
                     usage_raw, usage_api, reservation_overrun_nano_usd, requested_model, attempts,
                     attempt_trail, bound_cost_nano_usd, web_search_requests, service_tier,
                     image_output_tokens, audio_cache_read_tokens)


cdef object new_event(request_id, time_ns, provider, model, streaming, status, http_status, input_tokens,
                      output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, has_usage,
                      project_id, key_hash, user_id, token_id, duration_ms, wire_format, tool_use_prompt_tokens,
                      cache_write_1h_tokens, audio_input_tokens, audio_output_tokens, usage_raw, usage_api,
                      reservation_overrun_nano_usd, requested_model, attempts, attempt_trail,
                      bound_cost_nano_usd, web_search_requests, service_tier, image_output_tokens,
                      audio_cache_read_tokens):
    """The same, for a compiled caller (``cimport``: no argument parsing; see
    ``_usage_event.pxd``): ``plano_fast/gateway/_settle.pyx``."""
    event = new_instance(_Event)
    put_slot(event, OFF[0], request_id)
    put_slot(event, OFF[1], time_ns)
    put_slot(event, OFF[2], provider)
    put_slot(event, OFF[3], model)
    put_slot(event, OFF[4], streaming)
    put_slot(event, OFF[5], status)
    put_slot(event, OFF[6], http_status)
    put_slot(event, OFF[7], input_tokens)
    put_slot(event, OFF[8], output_tokens)
    put_slot(event, OFF[9], cache_read_tokens)
    put_slot(event, OFF[10], cache_write_tokens)
    put_slot(event, OFF[11], reasoning_tokens)
    put_slot(event, OFF[12], has_usage)
    put_slot(event, OFF[13], project_id)
    put_slot(event, OFF[14], key_hash)
    put_slot(event, OFF[15], user_id)
    put_slot(event, OFF[16], token_id)
    put_slot(event, OFF[17], duration_ms)
    put_slot(event, OFF[18], wire_format)
    put_slot(event, OFF[19], tool_use_prompt_tokens)
    put_slot(event, OFF[20], cache_write_1h_tokens)
    put_slot(event, OFF[21], audio_input_tokens)
    put_slot(event, OFF[22], audio_output_tokens)
    put_slot(event, OFF[23], usage_raw)
    put_slot(event, OFF[24], usage_api)
    put_slot(event, OFF[25], reservation_overrun_nano_usd)
    put_slot(event, OFF[26], requested_model)
    put_slot(event, OFF[27], attempts)
    put_slot(event, OFF[28], attempt_trail)
    put_slot(event, OFF[29], bound_cost_nano_usd)
    put_slot(event, OFF[30], web_search_requests)
    put_slot(event, OFF[31], service_tier)
    put_slot(event, OFF[32], image_output_tokens)
    put_slot(event, OFF[33], audio_cache_read_tokens)
    # out of the cyclic GC when every field is a scalar (they are, and are only ever set
    # to scalars): events wait for the flush by the hundred (plano_fast/_slots.pxd)
    untrack_if_scalars(event, OFF, N)
    return event
