-- Document state (SPEC §3a): the configured fields of every header and child row of a
-- document, and of every row of a `keep_state = true` object, as of the last captured
-- commit. Changed by the outbox writer in the transaction of the events it makes and the
-- checkpoint, so state and events are exactly-once together.
--
-- One row per source row, not one per document: a line update rewrites one small row
-- instead of the whole invoice, a line moved to another invoice is found by its own key
-- (under REPLICA IDENTITY DEFAULT the WAL does not say which invoice it left), and a
-- document of 50,000 lines is never one value.
CREATE TABLE document_row (
    -- The object's config key (`[objects.NAME]`).
    object   text NOT NULL,
    -- 0 for the header row, N for a row of the object's N-th collection.
    part     smallint NOT NULL,
    -- The row's key: a JSON array of its key columns' values, in key order.
    row_key  text NOT NULL,
    -- The document's key, a JSON array like row_key: the header's key, or a child's
    -- parent_key values.
    doc_key  text NOT NULL,
    -- {"k": key map (header), "s": order_by values (child), "f": the fields}, as JSON.
    row      text NOT NULL,
    PRIMARY KEY (object, part, row_key)
) WITH (fillfactor = 80);
-- fillfactor: a line update then usually stays on its page (HOT), touching no index.
CREATE INDEX document_row_doc ON document_row (object, doc_key);

-- Where each object's state was seeded from: a snapshot consistent with `lsn`. Source
-- commits before it are in the state already; capture applies the ones after. A changed
-- `fingerprint` (table, key, fields or collections edited) seeds the object again.
CREATE TABLE document_seed (
    object      text PRIMARY KEY,
    fingerprint text NOT NULL,
    lsn         pg_lsn NOT NULL,
    rows        bigint NOT NULL,
    seeded_at   timestamptz NOT NULL DEFAULT now()
);

-- Documents a very large source transaction has touched, kept here instead of in memory
-- until its commit makes their events: what each looked like before the transaction.
-- Empty outside an outbox transaction.
CREATE TABLE document_pending (
    object   text NOT NULL,
    doc_key  text NOT NULL,
    ordinal  integer NOT NULL,
    -- The document's rows before the transaction: [[part, row_key, row], …] as JSON.
    before   text NOT NULL,
    PRIMARY KEY (object, doc_key)
);
