# cython: language_level=3
"""``ClientHeaders(...)`` and ``Credential(...)`` for the request path, compiled: twins of
the classes' own constructors, chosen in ``plano_fast.credentials`` (``new_client_headers``,
``new_credential``).

Why: every forwarded request builds one of each, and on 3.11 calling a class with a Python
``__init__`` costs ~1.5k instructions before its first store.  Here the instance is
allocated and its slots written in place (``plano_fast/_slots.pxd``): the same instance
``__init__`` makes (tests/test_record_twins.py compares them slot by slot).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy

from plano_fast._slots cimport new_instance, put_slot, slot_offset

from plano_fast.credentials import ClientHeaders, Credential
from plano_fast.credentials import read_client_headers as _read_client_headers  # (defined before it imports this)

CLIENT_FIELDS = ("block", "operator_block", "seen_version", "request_id", "credential", "query")
CREDENTIAL_FIELDS = ("secret", "line")
if tuple(ClientHeaders.__slots__) != CLIENT_FIELDS or tuple(Credential.__slots__) != CREDENTIAL_FIELDS:
    raise ImportError("ClientHeaders or Credential changed: _new_credentials.pyx must be updated")

cdef Py_ssize_t C0 = slot_offset(ClientHeaders, "block")
cdef Py_ssize_t C5 = slot_offset(ClientHeaders, "operator_block")
cdef Py_ssize_t C1 = slot_offset(ClientHeaders, "seen_version")
cdef Py_ssize_t C2 = slot_offset(ClientHeaders, "request_id")
cdef Py_ssize_t C3 = slot_offset(ClientHeaders, "credential")
cdef Py_ssize_t C4 = slot_offset(ClientHeaders, "query")
cdef Py_ssize_t K0 = slot_offset(Credential, "secret")
cdef Py_ssize_t K1 = slot_offset(Credential, "line")

cdef type _ClientHeaders = ClientHeaders
cdef type _Credential = Credential


def new_client_headers(block, operator_block, seen_version, request_id, credential, query):
    """``ClientHeaders(block, operator_block, seen_version, request_id, credential, query)``."""
    return new_client_headers_c(block, operator_block, seen_version, request_id, credential, query)


cdef object new_client_headers_c(object block, object operator_block, object seen_version, object request_id,
                                 object credential, object query):
    client = new_instance(_ClientHeaders)
    put_slot(client, C0, block)
    put_slot(client, C5, operator_block)
    put_slot(client, C1, seen_version)
    put_slot(client, C2, request_id)
    put_slot(client, C3, credential)
    put_slot(client, C4, query)
    return client


def new_credential(secret, line):
    """``Credential(secret, line)``."""
    credential = new_instance(_Credential)
    put_slot(credential, K0, secret)
    put_slot(credential, K1, line)
    return credential


def plain_bearer(bytes value not None):
    """``credentials._plain_bearer(value)``: the credential of ``Bearer <token>`` (one
    space, a token of printable ASCII without spaces), else None.

    Why: the twin's ``bytes.translate`` builds a 256-byte table on every call (~1.7k
    instructions of the ~2.3k the usual Authorization header cost); here the token is
    checked in the loop that finds its end, and the line written in place."""
    return plain_bearer_c(value)


cdef object plain_bearer_c(bytes value):
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef unsigned char *w
    if n <= 7 or memcmp(s, b"Bearer ", 7) != 0:
        return None
    for i in range(7, n):
        if s[i] < 0x21 or s[i] > 0x7E:
            return None
    token = PyBytes_FromStringAndSize(<const char *>s + 7, n - 7)
    line = PyBytes_FromStringAndSize(NULL, 15 + n + 2)
    w = <unsigned char *>PyBytes_AS_STRING(line)
    memcpy(w, b"authorization: ", 15)
    memcpy(w + 15, s, n)
    w[15 + n] = 13
    w[16 + n] = 10
    credential = new_instance(_Credential)
    put_slot(credential, K0, token)
    put_slot(credential, K1, line)
    return credential


# -- key_hash (twin: plano_fast.gateway.phases._key_hash, whose memo this reads) ------------

cdef extern from "Python.h":
    Py_hash_t _Py_HashBytes(const void *src, Py_ssize_t len)

cdef dict _memo = None
cdef bytes _salt = b""
cdef object _slow = None


def install_key_hash(dict memo not None, bytes salt not None, slow not None):
    """Read ``memo`` (``phases._KEY_HASHES``) with ``salt`` (``phases._KEY_SALT``); a key
    not found there goes to ``slow`` (``phases._key_hash``: SHA-256, and the memo's entry)."""
    global _memo, _salt, _slow
    _memo, _salt, _slow = memo, salt, slow


def key_hash(bytes key not None):
    """``phases._key_hash(key)``: the memo's digest when its entry is the key's (both keyed
    SipHashes agree), else ``_slow(key)``.

    Why: every identified request asks, and the twin's frame and ``key + salt`` (a bytes
    object to hash) were ~1k instructions; the salted hash is taken here over a stack copy
    (``_Py_HashBytes``: what ``hash()`` of that concatenation computes)."""
    return key_hash_c(key)


cdef object key_hash_c(bytes key):
    cdef unsigned char joined[512]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key), m = PyBytes_GET_SIZE(_salt)
    cdef Py_hash_t check
    if _memo is None:
        raise RuntimeError("install_key_hash was not called")
    entry = _memo.get(hash(key))
    if entry is None:
        return _slow(key)
    if n + m <= 512:
        memcpy(joined, PyBytes_AS_STRING(key), n)
        memcpy(joined + n, PyBytes_AS_STRING(_salt), m)
        check = _Py_HashBytes(joined, n + m)
    else:
        check = hash(key + _salt)
    if type(entry) is tuple and len(<tuple>entry) == 2 and (<tuple>entry)[0] == check:
        return (<tuple>entry)[1]
    return _slow(key)


# -- read_client_headers (twin: plano_fast.credentials.read_client_headers) -----------------

cdef bytes _AUTHORIZATION = b"authorization"


cdef object read_client_headers_c(object headers, object query, object forward):
    """``credentials.read_client_headers(headers, query, forward)`` for the request path's
    usual request: the fast parser's ``forward`` tuple, no query, no credential or one
    ``Authorization: Bearer <token>`` (``plain_bearer``'s form).  Anything else -- a query
    (its ``key=`` and credential-like names), two credentials, another header, a Bearer
    value the general rules must read, no ``forward`` -- goes to the twin, before any side
    effect (there is none here but the records made).

    Why: the twin is a Python frame, a seven-way unpack and two more calls (~3k
    instructions a request); the compiled request starts (``gateway/_firewall.pyx``,
    ``_config.pyx``) call this as a C function."""
    if query or type(forward) is not tuple or len(<tuple>forward) != 7:
        return _read_client_headers(headers, query, forward)
    block, seen_version, request_id, count, name, value, operator_block = <tuple>forward
    credential = None
    if count is not None and count:
        if (count != 1 or type(name) is not bytes or type(value) is not bytes
                or <bytes>name != _AUTHORIZATION):
            return _read_client_headers(headers, query, forward)
        credential = plain_bearer_c(<bytes>value)
        if credential is None:
            return _read_client_headers(headers, query, forward)
    return new_client_headers_c(block, operator_block, seen_version, request_id, credential, query)
