-- plano_fast schema, version 7 (PostgreSQL): upstream attempts per client request (issue 20).
-- Same columns and meaning as the SQLite file.
--
--   attempts      = how many upstream attempts the gateway made for the client request
--                   (1 when nothing was retried; 0 when it was never forwarded).  Still one
--                   row per client request: provider/model name the target that served.
--   attempt_trail = the outcome of each attempt, in order, when there was more than one:
--                   an HTTP status or an error kind (connect_error, timeout,
--                   idle_timeout, upstream_error), e.g. "503,connect_error,200"; at most
--                   200 characters (",..." ends a longer one).  NULL for one attempt.
--   Both NULL on rows written before v7.
ALTER TABLE usage_log ADD COLUMN attempts INTEGER CHECK (attempts IS NULL OR attempts >= 0);
ALTER TABLE usage_log ADD COLUMN attempt_trail TEXT;
