-- plano_fast schema, version 8 (PostgreSQL): indexes no query needs, dropped (issue 27).
--
--   usage_log_price_status        no query reads usage_log by price_status; the partial
--                                 index's WHERE was evaluated on every usage row written.
--   spending_reservations_expiry  read only by the periodic sweep of expired reservations,
--   spending_reservations_owner   and of those whose owner's heartbeat went stale.  The
--                                 table holds only reservations in flight (settle and
--                                 release delete them), so those sweeps scan a small table;
--                                 the indexes cost an insert and a delete each on every
--                                 managed request (reserve, settle): measured -4.8% of the
--                                 hard-limit path's instructions without them.
DROP INDEX IF EXISTS usage_log_price_status;
DROP INDEX IF EXISTS spending_reservations_expiry;
DROP INDEX IF EXISTS spending_reservations_owner;
