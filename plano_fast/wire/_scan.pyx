# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Compiled byte scanner: model / stream / token usage straight from raw request and
response bytes, without building JSON objects.

The specification (mapping, caps, duplicate-key rule, SSE rules) lives in the docstring of
:mod:`plano_fast.wire._scan_py`, the pure-Python twin; both give identical results.

How it works: one resumable, validating JSON state machine (``Walker``) reads every byte
once, keeping only a 512-entry container stack and a few small fixed buffers.  String contents
are skipped 16/32 bytes at a time (SSE2; SWAR fallback elsewhere).  Keys are only looked at in
the few "interesting" objects on the paths we read (the document, ``usage``,
``*_tokens_details``, ``message``/``response``/``x_groq``, ``stream_options``...), in place when
they are plain ASCII, and in compact JSON a run of such members (key, ':', a scalar, ',') is
taken in one loop (``members_fast``); everything under any other key is validated by
``fast_skip``, a tight loop with its state in registers that hands partial tokens (cut by a
chunk boundary) back to the resumable general path.  The SSE layer feeds each ``data:`` payload straight into the walker
as it arrives, so nothing is buffered except, with ``strip_usage_chunk``, the current event (up
to ``MAX_HOLD_BYTES``).  A scanner is not thread-safe (one per response); inputs of 1 MiB or
more are scanned with the GIL released.
"""

cimport cython
from libc.string cimport memcmp, memcpy
from libc.stdlib cimport malloc, free
from libc.stdint cimport int64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from plano_fast.wire._shared import (
    ScanError,
    MSG_NOT_OBJECT,
    MSG_MODEL_TYPE,
    MSG_MODEL_SURROGATE,
    MSG_STREAM_TYPE,
    MSG_STREAM_OPTIONS_TYPE,
    MSG_INCLUDE_USAGE_TYPE,
    MSG_GENERATION_CONFIG_TYPE,
    msg_max_type,
    msg_duplicate,
    DUPLICATE_NAMES,
    decode_json_string,
    encode_json_string,
    has_lone_surrogate,
)
# more spans than C_SPANS to edit (a body repeating "model" or "stream_options" over and
# over): the twin rewrites those few bodies
from plano_fast.wire._scan_py import rewrite_request as _py_rewrite_request

__all__ = [
    "API_ANTHROPIC",
    "API_GEMINI",
    "API_OPENAI_CHAT",
    "API_OPENAI_RESPONSES",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_EVENT_BYTES",
    "MAX_HOLD_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_TOKEN_COUNT",
    "RequestFields",
    "ScanError",
    "Usage",
    "UsageScanner",
    "rewrite_request",
    "scan_request",
]

cdef extern from "_simd.h":
    const unsigned char *pf_scan_plain(const unsigned char *p, const unsigned char *end) noexcept nogil
    const unsigned char *pf_scan_text(const unsigned char *p, const unsigned char *end) noexcept nogil
    const unsigned char *pf_find_eol(const unsigned char *p, const unsigned char *end) noexcept nogil
    bint pf_eq_lit(const unsigned char *a, const char *lit, size_t m) noexcept nogil

# The scanner in reviewable pieces, one C module (Cython ``include`` is textual, as in
# asyncpg): the definitions, the JSON walker (structure, then tokens and the feed loop), the
# request side, the response side.
include "_scan_defs.pxi"
include "_scan_walker.pxi"
include "_scan_tokens.pxi"
include "_scan_request.pxi"
include "_scan_usage.pxi"
