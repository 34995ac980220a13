-- plano_fast schema, version 2 (SQLite): one usage row convention for every provider
-- (issue 18; README "Usage rows").  Same columns and meanings as the PostgreSQL file.
--
--   input_tokens  = every prompt token (uncached + cache read + cache write + tool-use prompt);
--                   cache_read_tokens, cache_write_tokens (of which cache_write_1h_tokens),
--                   tool_use_prompt_tokens, audio_input_tokens are parts of it;
--   output_tokens = every billed output token (visible + reasoning); reasoning_tokens and
--                   audio_output_tokens are parts of it.
--   usage_raw     = the provider's usage object(s) as received, in a document (<= 4 KiB)
--                   that re-scans with the scan API named by usage_api to the same row;
--   price_entry   = the price used ('provider/model' of the bundled table, or 'custom');
--   price_status  gains 'priced_partial' (priced and counted, but a dimension had no price
--                   of its own and was charged at its fallback).

ALTER TABLE usage_log ADD COLUMN tool_use_prompt_tokens INTEGER NOT NULL DEFAULT 0
    CHECK (tool_use_prompt_tokens >= 0);
ALTER TABLE usage_log ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0
    CHECK (cache_write_1h_tokens >= 0);
ALTER TABLE usage_log ADD COLUMN audio_input_tokens INTEGER NOT NULL DEFAULT 0
    CHECK (audio_input_tokens >= 0);
ALTER TABLE usage_log ADD COLUMN audio_output_tokens INTEGER NOT NULL DEFAULT 0
    CHECK (audio_output_tokens >= 0);
ALTER TABLE usage_log ADD COLUMN usage_api TEXT;
ALTER TABLE usage_log ADD COLUMN usage_raw TEXT;
ALTER TABLE usage_log ADD COLUMN price_entry TEXT;

-- Existing rows to the convention, from their stored fields.  Version-1 rows hold the
-- provider's counts as reported, read the way they were priced (plano_fast.pricing before
-- version 2: by provider):
--   * Anthropic: input_tokens excluded cache reads and writes -> add them;
--   * Gemini and xAI: output excluded reasoning (candidatesTokenCount without
--     thoughtsTokenCount; xAI's reasoning outside completion_tokens) -> add it.
--     (Rows from Gemini's OpenAI-compatible endpoint are assumed to hold reasoning_tokens 0,
--     as that endpoint reported none: they are unchanged.)
-- Costs are unchanged: the version-2 formula on the converted counts is the version-1
-- formula on the old ones, so spending counters stay equal to the log.  Tool-use prompt
-- tokens were never read before version 2 and cannot be recovered (no usage_raw).
UPDATE usage_log SET input_tokens = input_tokens + cache_read_tokens + cache_write_tokens
 WHERE lower(trim(provider)) IN ('anthropic', 'claude')
   AND (cache_read_tokens > 0 OR cache_write_tokens > 0);
UPDATE usage_log SET output_tokens = output_tokens + reasoning_tokens
 WHERE lower(trim(provider)) IN ('gemini', 'google', 'google-ai-studio', 'xai', 'x-ai')
   AND reasoning_tokens > 0;

CREATE INDEX usage_log_price_status ON usage_log (price_status)
    WHERE price_status = 'priced_partial';
