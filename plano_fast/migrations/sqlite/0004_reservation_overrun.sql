-- plano_fast schema, version 4 (SQLite): reservation overruns on the usage row (issue 26).
-- Same column and meaning as the PostgreSQL file.
--
--   reservation_overrun_nano_usd = in managed mode under a hard limit, how much the row's
--                   cost exceeded the reservation held for it (the provider reported more
--                   than the bound allowed: README "Spending limits"); NULL when the cost
--                   stayed within the reservation or no reservation was held.  Counted
--                   in /metrics too (reservation_overruns, reservation_overrun_nano_usd).
ALTER TABLE usage_log ADD COLUMN reservation_overrun_nano_usd INTEGER
    CHECK (reservation_overrun_nano_usd IS NULL OR reservation_overrun_nano_usd > 0);
