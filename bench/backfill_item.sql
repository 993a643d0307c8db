-- The backfill figure's table (bench/src/backfill.rs, bench/debezium/incremental_snapshot.py):
-- one ERP-ish row of the shapes that matter for encoding (bigint key, integer, two texts,
-- numeric, timestamptz), filled server-side in one statement. `{rows}` is replaced by the
-- row count. Run `VACUUM ANALYZE backfill_item` after it, outside a transaction.
DROP TABLE IF EXISTS backfill_item;
CREATE TABLE backfill_item (
    id           bigint PRIMARY KEY,
    partner_id   integer NOT NULL,
    number       text NOT NULL,
    state        text NOT NULL,
    amount_total numeric(12,2) NOT NULL,
    updated_at   timestamptz NOT NULL
);
INSERT INTO backfill_item (id, partner_id, number, state, amount_total, updated_at)
SELECT g, (g % 500)::integer, 'INV-' || g, CASE WHEN g % 3 = 0 THEN 'posted' ELSE 'draft' END,
       (g % 100000) / 7.0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, {rows}) g;
