-- plano_fast schema, version 10 (PostgreSQL): usage_input, a usage row as written, and
-- reserve_input, a reservation of a batch on one counter (issue 27).
--
-- Batches of usage rows (write_usage under 100 rows, settle) were sent as one array per
-- column, 31 arrays; asyncpg checks every element of an array parameter against
-- collections.abc (isinstance(x, Iterable), then Sized: a Python-level __instancecheck__
-- each, ~0.4 us), ~39 checks per row.  Sent as ONE array of this composite type (a tuple
-- per row), a row costs three: measured on a 32-row batch 430-440 -> 232-240 us of the
-- gateway's CPU, and 625-650 -> 525-550 us of the server's.  Its attributes are
-- plano_fast.store.sql.USAGE_COLUMN_TYPES, in order (tests/test_store_pg_batch.py checks):
-- a migration adding a written column to usage_log adds it here too (ALTER TYPE ... ADD
-- ATTRIBUTE).
CREATE TYPE usage_input AS (
    request_id text,
    time_ns bigint,
    project_id text,
    user_id text,
    key_hash text,
    token_id text,
    provider text,
    model text,
    input_tokens bigint,
    output_tokens bigint,
    cache_read_tokens bigint,
    cache_write_tokens bigint,
    reasoning_tokens bigint,
    streaming boolean,
    status text,
    http_status integer,
    priced boolean,
    cost_nano_usd bigint,
    duration_us bigint,
    price_status text,
    tool_use_prompt_tokens bigint,
    cache_write_1h_tokens bigint,
    audio_input_tokens bigint,
    audio_output_tokens bigint,
    usage_api text,
    usage_raw text,
    price_entry text,
    reservation_overrun_nano_usd bigint,
    requested_model text,
    attempts integer,
    attempt_trail text
);

-- reserve_input: one request's reservation on one counter, as the batch reservation
-- statement (plano_fast/store/pg_reserve.py RESERVE_MANY) reads it: the request's arrival
-- number in its batch, the counter, its limit, the amount, the reservation's id, expiry and
-- owner.  Ten arrays before, one per column (the same ~0.4 us check per element).
CREATE TYPE reserve_input AS (
    j integer,
    k text,
    i text,
    p text,
    s bigint,
    lim bigint,
    a bigint,
    rid text,
    exp bigint,
    own text
);
