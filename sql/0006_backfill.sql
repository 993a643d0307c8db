-- Backfills (SPEC §3b): the rows that already exist, sent as `read` events. One row per
-- backfill asked for; the daemon works through them one at a time, oldest first. Progress
-- (`last_key`, `chunks`, `rows`) commits in the same transaction as the chunk's events, so
-- a crash resumes after the last committed chunk and no row is written twice.
CREATE TABLE backfill (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription  text NOT NULL,
    state         text NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    -- `--where`: a condition over the table's columns, as the user wrote it.
    filter        text,
    -- Who asked: `config` (backfill = true), `cli` or `api`.
    requested_by  text NOT NULL CHECK (requested_by IN ('config', 'cli', 'api')),
    -- The key of the last row of the last committed chunk: a JSON array of the key
    -- columns' text forms, in key order. NULL before the first chunk.
    last_key      text,
    chunks        bigint NOT NULL DEFAULT 0,
    rows          bigint NOT NULL DEFAULT 0,
    -- The planner's estimate of the table's rows when the backfill started.
    rows_estimate bigint,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
-- At most one live backfill per subscription: asking again while one runs is refused.
CREATE UNIQUE INDEX backfill_running ON backfill (subscription) WHERE state = 'running';

-- Subscriptions a running daemon has seen: `backfill = true` backfills a subscription the
-- first time it appears (SPEC §2). The subscriptions that already have deliveries were seen
-- before this table existed.
CREATE TABLE subscription_seen (
    subscription  text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO subscription_seen (subscription)
SELECT DISTINCT subscription FROM delivery;
