-- Reservations that heal (issue 26): each reservation names the gateway instance that
-- holds it, and every instance keeps a heartbeat.  A sweeper on every instance releases
-- reservations past their expiry and those whose owner's heartbeat went stale (a process
-- that was killed), so no reservation stays held forever.
ALTER TABLE spending_reservations ADD COLUMN owner TEXT COLLATE "C";
CREATE INDEX spending_reservations_owner ON spending_reservations (owner);

CREATE TABLE gateway_instances (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    host                TEXT NOT NULL,
    pid                 INTEGER NOT NULL,
    started_at_ns       BIGINT NOT NULL,
    heartbeat_at_ns     BIGINT NOT NULL
);
