-- The durable outbox. Applied with search_path set to the configured schema (default
-- `walhook`), inside one transaction, by `walhook run` and `walhook setup`.

-- The last source commit whose events are in the outbox, per slot. It commits in the same
-- transaction as those events: this row is what makes capture exactly-once.
CREATE TABLE checkpoint (
    slot        text PRIMARY KEY,
    commit_lsn  pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One envelope: the exact bytes sent on every attempt (bytea, never jsonb, which would
-- reorder keys). Subscriptions that see a change through the same object and event type
-- share one row; `event_id` is shared by every subscription that receives the change.
CREATE TABLE event (
    seq          bigint PRIMARY KEY,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    object       text NOT NULL,
    key          text NOT NULL,        -- the row key as minified JSON: the ordering key
    body         bytea NOT NULL,
    commit_lsn   pg_lsn NOT NULL,
    committed_at timestamptz NOT NULL, -- source commit time, for end-to-end latency
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE event_seq OWNED BY event.seq;
CREATE INDEX event_event_id ON event (event_id);

-- One event for one subscription. No foreign key to event: the writer inserts both in one
-- transaction, and retention drops old rows of both without per-row checks.
CREATE TABLE delivery (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription     text NOT NULL,
    event_seq        bigint NOT NULL,
    -- A hash of the event's object and row key: events of one ordering key reach the
    -- subscription in event_seq order. A collision only orders two keys needlessly.
    ordering_key     bigint NOT NULL DEFAULT 0,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    -- When it became delivered or dead: `outbox.retention` counts from here (a delivery
    -- replayed and dead again is kept for the whole retention once more).
    settled_at       timestamptz,
    -- Set once a batch request carried this delivery: a failed batch is retried whole,
    -- under the same id (SPEC §4 `webhook-id`).
    batch_id         text,
    -- What triggers the next attempt: `replay` after `walhook replay`, until it is made.
    trigger          text NOT NULL DEFAULT 'scheduled'
                     CHECK (trigger IN ('scheduled', 'replay'))
)
-- Half of each page free: a claim's lease (`leased_until`, in no index) then fits beside the
-- row as a HOT update, instead of a new entry in every index of this table. Measured with
-- 100-event batches: a quarter less Postgres CPU per event and ~15 % more events/s, for a
-- hot table twice the size.
WITH (fillfactor = 50);
-- The dispatcher's claim: a subscription's live rows in event order.
CREATE INDEX delivery_pending ON delivery (subscription, event_seq)
    WHERE status = 'pending';
-- Key ordering: is an earlier event of this key still pending? Pending rows are exactly the
-- unsettled ones (walhook sets settled_at with delivered/dead and clears it on retry and
-- replay). The predicate differs from delivery_pending's on purpose: the claim's key probe
-- cannot use delivery_pending then, which the planner otherwise picked while the table had
-- no statistics yet, scanning every earlier pending row per candidate (measured: 100 ms
-- per claim at 60,000 pending), and the claim itself cannot use this one.
CREATE INDEX delivery_pending_key ON delivery (subscription, ordering_key, event_seq)
    WHERE settled_at IS NULL;

-- Dead deliveries, for `walhook replay`, the log and the dead-letter metric.
CREATE INDEX delivery_dead ON delivery (subscription, created_at)
    WHERE status = 'dead';

-- Retention: settled deliveries, oldest first. Rows settled without `settled_at` (written
-- by hand) count from their creation.
CREATE INDEX delivery_settled ON delivery ((coalesce(settled_at, created_at)))
    WHERE status IN ('delivered', 'dead');
-- Retention: is an event still referenced by another delivery?
CREATE INDEX delivery_event ON delivery (event_seq);

-- Failed batches waiting for their retry.
CREATE INDEX delivery_batched ON delivery (subscription, event_seq)
    WHERE status = 'pending' AND batch_id IS NOT NULL;

-- Subscriptions the receiver switched off with 410 Gone. Their deliveries stay pending
-- until `walhook replay` (or the admin API) turns the subscription back on.
CREATE TABLE subscription_state (
    subscription   text PRIMARY KEY,
    deactivated_at timestamptz NOT NULL DEFAULT now(),
    reason         text NOT NULL
);

-- One HTTP attempt. `walhook test` requests have no delivery.
CREATE TABLE attempt (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      bigint,
    subscription     text NOT NULL,
    attempt          integer NOT NULL,
    trigger          text NOT NULL CHECK (trigger IN ('scheduled', 'replay', 'test')),
    started_at       timestamptz NOT NULL,
    duration_ms      integer,
    status_code      integer,
    error            text,
    response_excerpt text
);
CREATE INDEX attempt_delivery ON attempt (delivery_id);
-- Retention: attempts oldest first.
CREATE INDEX attempt_started ON attempt (started_at);

-- What users read (SPEC §5).
CREATE VIEW deliveries AS
SELECT d.id, d.subscription, e.event_id, e.event_type, e.object, e.key::jsonb AS key,
       d.status, d.attempts, d.next_attempt_at, d.last_status_code, d.last_error,
       d.created_at, d.delivered_at
FROM delivery d
JOIN event e ON e.seq = d.event_seq;

CREATE VIEW attempts AS
SELECT delivery_id, attempt, trigger, started_at, duration_ms, status_code, error,
       response_excerpt
FROM attempt;
