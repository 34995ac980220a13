"""The request pipeline: from a parsed request to an upstream request, relayed and settled.

One request, config mode, warm pool::

    http_server.py        parse, limits, keep-alive          -> Gateway.handle (app.py)
    gateway/dispatch.py   the endpoint table                  -> one mode's exchange
    gateway/modes/*.py    identify -> admit -> route -> rewrite (one module per mode;
                          the admission phases are functions in gateway/phases.py; the
                          config model's targets, conversion and retries gateway/routed.py)
    gateway/upstream_request.py   the upstream request's bytes
    gateway/relay.py      forward through the pool (upstream.py), relay the response
                          through the scanner and the body filter, settle the usage event

Import rules (tests/test_import_rules.py, tests/test_gateway_layout.py): mode modules never import each other; the
shared modules (relay, phases, routed, endpoints, upstream_request) never import a mode;
the protocol (http_server.py) never imports stores or billing (tests/test_import_rules.py).
"""
