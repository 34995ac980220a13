-- plano_fast schema, version 11 (PostgreSQL): spending counters split into shards (issue 27).
--
-- A counter (scope, period, period start) is now the SUM of its rows, one per shard.  Usage
-- batches (write_usage: the synchronous writer of managed mode, the billing flusher) add
-- their cost to the shard their writer holds (plano_fast.store.postgres, _WRITE_SHARDS), so
-- two batches in flight update different rows and neither waits for the other's row locks,
-- held until its commit is flushed: their commits overlap (and share WAL flushes) instead of
-- running one after another.  Reservations and settles (hard budgets) keep shard 0 -- the
-- only shard whose reserved_nano_usd is ever non-zero -- and a reservation locks every
-- shard of its counters (FOR UPDATE, in the global lock order, shard last) and checks the
-- limit against their sum, so budgets stay hard.  Existing rows become shard 0.
ALTER TABLE spending_counters ADD COLUMN shard SMALLINT NOT NULL DEFAULT 0 CHECK (shard >= 0);
ALTER TABLE spending_counters DROP CONSTRAINT spending_counters_pkey;
ALTER TABLE spending_counters ADD PRIMARY KEY (scope_kind, scope_id, period, period_start, shard);
