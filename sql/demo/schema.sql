-- The sample ERP of `walhook demo`: partners, invoices with lines, sales orders, stock
-- moves and work orders. Loaded into a throw-away database; nothing here is walhook's own.

CREATE TABLE res_partner (
    id      serial PRIMARY KEY,
    name    text NOT NULL,
    vat     text,
    city    text
);

CREATE TABLE account_invoice (
    id           serial PRIMARY KEY,
    number       text,
    partner_id   integer NOT NULL REFERENCES res_partner (id),
    state        text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'posted', 'paid', 'cancel')),
    invoice_date date NOT NULL DEFAULT current_date,
    amount_total numeric(12, 2) NOT NULL DEFAULT 0
);
-- No REPLICA IDENTITY FULL: the invoice is a document, whose state walhook keeps, so its
-- `watch` subscriptions know the old values anyway.

CREATE TABLE account_invoice_line (
    id          serial PRIMARY KEY,
    invoice_id  integer NOT NULL REFERENCES account_invoice (id),
    product     text NOT NULL,
    quantity    numeric(12, 3) NOT NULL,
    price_unit  numeric(12, 2) NOT NULL
);

CREATE TABLE sale_order (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    partner_id  integer NOT NULL REFERENCES res_partner (id),
    state       text NOT NULL DEFAULT 'draft',
    amount      numeric(12, 2) NOT NULL DEFAULT 0
);

CREATE TABLE stock_move (
    id          serial PRIMARY KEY,
    product     text NOT NULL,
    quantity    numeric(12, 3) NOT NULL,
    location    text NOT NULL,
    destination text NOT NULL,
    reference   text
);

CREATE TABLE work_order (
    id        serial PRIMARY KEY,
    name      text NOT NULL,
    product   text NOT NULL,
    status    text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'progress', 'done')),
    operator  text
);
ALTER TABLE work_order REPLICA IDENTITY FULL;

INSERT INTO res_partner (name, vat, city) VALUES
    ('Baltic Timber UAB', 'LT100001234', 'Vilnius'),
    ('Nordic Fasteners AB', 'SE556677889901', 'Malmö'),
    ('Danube Tools Kft', 'HU12345678', 'Budapest');

INSERT INTO sale_order (name, partner_id, state, amount) VALUES
    ('SO/2026/0001', 1, 'sale', 1250.00);

INSERT INTO work_order (name, product, status) VALUES
    ('WO/2026/0007', 'Oak table, 180 cm', 'ready');
