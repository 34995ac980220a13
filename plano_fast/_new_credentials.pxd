# cython: language_level=3
"""The request path's credential reads (``_new_credentials.pyx``) as C functions, for the
compiled request starts (``gateway/_firewall.pyx``, ``_config.pyx``): one rule, one place --
the key-hash memo read and the client's headers read are written once, there."""

cdef object new_client_headers_c(object block, object operator_block, object seen_version, object request_id,
                                 object credential, object query)
cdef object plain_bearer_c(bytes value)
cdef object key_hash_c(bytes key)
cdef object read_client_headers_c(object headers, object query, object forward)
