//! The ERP-like schema the benchmark captures, and the server-side generator of its changes.

/// Invoices, sales orders and stock moves: the tables the seeds' users watch.
pub const SCHEMA: &str = r#"
CREATE TABLE invoice (
    id           bigint PRIMARY KEY,
    partner_id   integer NOT NULL,
    number       text NOT NULL,
    state        text NOT NULL,
    amount_total numeric(12,2) NOT NULL,
    currency     char(3) NOT NULL DEFAULT 'EUR',
    due_date     date,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sales_order (
    id           bigint PRIMARY KEY,
    partner_id   integer NOT NULL,
    state        text NOT NULL,
    amount_total numeric(12,2) NOT NULL,
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE stock_move (
    id            bigint PRIMARY KEY,
    article_id    integer NOT NULL,
    location_from integer NOT NULL,
    location_to   integer NOT NULL,
    quantity      numeric(12,3) NOT NULL,
    state         text NOT NULL,
    moved_at      timestamptz NOT NULL DEFAULT now()
);

-- `changes` row changes, committed every `per_txn` of them, round-robin over the three
-- tables. Each table repeats a cycle of ten: five inserts, two updates of one column, two
-- updates of two columns (always of the newest row) and one delete (of the oldest row), so
-- every statement changes exactly one row and the slot holds exactly `changes` changes.
CREATE PROCEDURE bench_workload(changes bigint, per_txn integer)
LANGUAGE plpgsql AS $$
DECLARE
    i        bigint := 0;
    t        integer;
    step     integer;
    newest   bigint[] := '{0,0,0}';
    oldest   bigint[] := '{0,0,0}';
BEGIN
    -- Generating the workload is not what is measured: don't wait for a flush per commit.
    PERFORM set_config('synchronous_commit', 'off', false);
    WHILE i < changes LOOP
        t := (i % 3)::integer + 1;
        step := ((i / 3) % 10)::integer;
        IF step IN (0, 1, 3, 5, 8) THEN
            newest[t] := newest[t] + 1;
            IF t = 1 THEN
                INSERT INTO invoice (id, partner_id, number, state, amount_total, due_date)
                VALUES (newest[t], newest[t] % 500, 'INV-' || newest[t], 'draft',
                        (newest[t] % 10000) / 7.0, current_date + 30);
            ELSIF t = 2 THEN
                INSERT INTO sales_order (id, partner_id, state, amount_total, note)
                VALUES (newest[t], newest[t] % 500, 'draft', (newest[t] % 10000) / 3.0,
                        'deliver to the back door');
            ELSE
                INSERT INTO stock_move (id, article_id, location_from, location_to, quantity, state)
                VALUES (newest[t], newest[t] % 2000, 1, 2, (newest[t] % 50) + 1, 'draft');
            END IF;
        ELSIF step IN (2, 6) THEN
            IF t = 1 THEN
                UPDATE invoice SET partner_id = partner_id + 1 WHERE id = newest[t];
            ELSIF t = 2 THEN
                UPDATE sales_order SET state = 'sale' WHERE id = newest[t];
            ELSE
                UPDATE stock_move SET quantity = quantity + 1 WHERE id = newest[t];
            END IF;
        ELSIF step IN (4, 9) THEN
            IF t = 1 THEN
                UPDATE invoice SET state = 'posted', updated_at = now() WHERE id = newest[t];
            ELSIF t = 2 THEN
                UPDATE sales_order SET state = 'done', amount_total = amount_total + 1
                WHERE id = newest[t];
            ELSE
                UPDATE stock_move SET state = 'done', moved_at = now() WHERE id = newest[t];
            END IF;
        ELSE
            oldest[t] := oldest[t] + 1;
            IF t = 1 THEN
                DELETE FROM invoice WHERE id = oldest[t];
            ELSIF t = 2 THEN
                DELETE FROM sales_order WHERE id = oldest[t];
            ELSE
                DELETE FROM stock_move WHERE id = oldest[t];
            END IF;
        END IF;
        i := i + 1;
        IF i % per_txn = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
    COMMIT;
END
$$;
"#;

/// The generator's call; one statement, so that the procedure may commit.
pub fn call(changes: u64, per_txn: u32) -> String {
    format!("CALL bench_workload({changes}, {per_txn})")
}

/// One transaction inserting `rows` stock moves: the huge transaction of the memory figure.
pub fn one_big_transaction(rows: u64) -> String {
    format!(
        "INSERT INTO stock_move (id, article_id, location_from, location_to, quantity, state) \
         SELECT g, g % 2000, 1, 2, (g % 50) + 1, 'draft' FROM generate_series(1, {rows}) g"
    )
}

/// The statement the latency figure commits once per event: one stock move.
pub const INSERT_ONE: &str =
    "INSERT INTO stock_move (id, article_id, location_from, location_to, quantity, state) \
     VALUES ($1::bigint, ($1::bigint % 2000)::integer, 1, 2, 1, 'draft')";

/// The marker transaction closing every workload: one more stock move with a negative id.
/// Returns, before its commit, a WAL position that only its commit record can pass.
pub const MARKER: &str =
    "INSERT INTO stock_move (id, article_id, location_from, location_to, quantity, state) \
     VALUES (-1, 0, 0, 0, 0, 'marker')";

/// The walhook subscription file for the three tables: one subscription per object, all
/// sending to `url`, each with the extra TOML lines in `extra`. `instance` names both the
/// slot and the outbox schema, so that several walhooks can drain one workload in turn.
pub fn walhook_config(
    source_url: &str,
    outbox_url: Option<&str>,
    instance: &str,
    url: &str,
    secret: &str,
    extra: &str,
) -> String {
    let mut config = config_head(source_url, outbox_url, instance);
    config.push_str(
        r#"
[objects.invoice]
table = "public.invoice"

[objects.sales_order]
table = "public.sales_order"

[objects.stock_move]
table = "public.stock_move"
"#,
    );
    for object in OBJECTS {
        config.push_str(&format!(
            "\n[[subscriptions]]\nname = \"{object}\"\nobject = \"{object}\"\nurl = \"{url}\"\n\
             secret = \"{secret}\"\n{extra}\n"
        ));
    }
    config
}

/// The walhook subscription file of the backfill figure: the backfill table's object and
/// one subscription of it, sending to `url`, that backfills when it is new.
pub fn backfill_config(
    source_url: &str,
    outbox_url: Option<&str>,
    instance: &str,
    url: &str,
    secret: &str,
) -> String {
    let mut config = config_head(source_url, outbox_url, instance);
    config.push_str(&format!(
        "\n[objects.{BACKFILL_SUBSCRIPTION}]\ntable = \"{BACKFILL_TABLE}\"\n\n\
         [[subscriptions]]\nname = \"{BACKFILL_SUBSCRIPTION}\"\nobject = \"{BACKFILL_SUBSCRIPTION}\"\n\
         url = \"{url}\"\nsecret = \"{secret}\"\nbackfill = true\n"
    ));
    config
}

/// Source, outbox, HTTP and delivery sections of every benchmark configuration.
pub(crate) fn config_head(source_url: &str, outbox_url: Option<&str>, instance: &str) -> String {
    let outbox_url = outbox_url.map_or(String::new(), |url| format!("url = \"{url}\""));
    format!(
        r#"[source]
url = "{source_url}"
slot = "{instance}"
publication = "walhook"

[outbox]
schema = "{instance}"
{outbox_url}

[http]
listen = "127.0.0.1:0"

[delivery]
allow_networks = ["127.0.0.0/8"]
"#
    )
}

/// The backfill figure's table, created and filled with `rows` rows; the same file makes
/// Debezium's table (bench/debezium/incremental_snapshot.py), so both read the same rows.
pub fn backfill_table(rows: u64) -> String {
    include_str!("../backfill_item.sql").replace("{rows}", &rows.to_string())
}

/// Run after [`backfill_table`], outside a transaction: the hint bits and the visibility map
/// are set before anyone reads, so that no reader pays for writing them.
pub const BACKFILL_VACUUM: &str = "VACUUM ANALYZE backfill_item";

/// The backfill table, schema-qualified as configurations and Debezium name it.
pub const BACKFILL_TABLE: &str = "public.backfill_item";

/// The backfill figure's object and subscription.
pub const BACKFILL_SUBSCRIPTION: &str = "backfill_item";

/// The source's plain read of the whole backfill table in key order: the floor any reader
/// of its rows pays.
pub const BACKFILL_SELECT: &str =
    "SELECT id, partner_id, number, state, amount_total, updated_at FROM backfill_item ORDER BY id";

/// The objects of the schema; each is also the name of its subscription.
pub const OBJECTS: [&str; 3] = ["invoice", "sales_order", "stock_move"];
