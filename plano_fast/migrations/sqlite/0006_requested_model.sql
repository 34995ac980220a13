-- plano_fast schema, version 6 (SQLite): the model name the client asked for (issue 28).
--
--   requested_model = the model name in the client's request (an alias, say) where the
--                   gateway routes by it (config mode, Gemini-format clients, managed
--                   pipes); usage_log.model is the model the provider served.  NULL in
--                   firewall mode, which routes nothing, and on rows written before v6.
ALTER TABLE usage_log ADD COLUMN requested_model TEXT;
