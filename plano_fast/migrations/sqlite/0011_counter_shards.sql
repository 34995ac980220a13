-- plano_fast schema, version 11 (SQLite): the shard column, always 0.
--
-- Version 11 splits PostgreSQL's spending counters into shards (a counter is the sum of its
-- rows, one per shard), so concurrent usage batches stop waiting on each other's counter row
-- locks.  SQLite has one writer at a time: one row per counter as before (shard 0, its
-- primary key unchanged); reads sum a counter's rows on both backends.  The column keeps the
-- two schemas alike.  The versions stay in step across the two backends.
ALTER TABLE spending_counters ADD COLUMN shard INTEGER NOT NULL DEFAULT 0 CHECK (shard = 0);
