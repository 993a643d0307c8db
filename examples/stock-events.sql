-- For examples/stock-events.toml: an article table with its stock level, which the demo
-- ERP (sql/demo/schema.sql) does not have. Load it after the demo schema.

CREATE TABLE article (
    id      serial PRIMARY KEY,
    code    text NOT NULL UNIQUE,
    name    text NOT NULL,
    stock   numeric(12, 3) NOT NULL DEFAULT 0,
    price   numeric(12, 2) NOT NULL DEFAULT 0
);
-- `watch = ["stock"]` needs the old values of non-key columns.
ALTER TABLE article REPLICA IDENTITY FULL;

INSERT INTO article (code, name, stock, price) VALUES
    ('OAK-180', 'Oak table, 180 cm', 4, 890.00),
    ('BOARD-2M', 'Oak board 2 m', 120, 24.50);
