-- Conversation state of the Responses API (issue 28): one row per stored response, so a
-- later request's previous_response_id finds its history from any worker or gateway
-- process sharing this database.  Written by plano_fast/responses_store.py, which also
-- runs this file when the table is absent (IF NOT EXISTS: safe to run twice).
--   input_items   JSON list: every input item of the conversation up to this turn
--   output_items  JSON list: this turn's output items
--   response      JSON: the answer as the client got it (GET /v1/responses/{id})
--   owner         the caller's key hash: no other key can read, continue or delete it
CREATE TABLE IF NOT EXISTS response_states (
    id              TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    model           TEXT NOT NULL,
    provider        TEXT NOT NULL,
    input_items     TEXT NOT NULL,
    output_items    TEXT NOT NULL,
    response        TEXT,
    created_at_ns   BIGINT NOT NULL,
    expires_at_ns   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS response_states_expires ON response_states (expires_at_ns);
