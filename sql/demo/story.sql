-- The scripted story of `walhook demo`: one business step per statement group, each
-- introduced by a "step:" comment line saying what happens; each runs in its own transaction.

-- step: an invoice is created for Baltic Timber, with two lines
WITH invoice AS (
    INSERT INTO account_invoice (partner_id, amount_total)
    VALUES (1, 1512.50) RETURNING id
)
INSERT INTO account_invoice_line (invoice_id, product, quantity, price_unit)
SELECT id, product, quantity, price_unit FROM invoice,
    (VALUES ('Oak board 2 m', 50, 24.25), ('Wood screws, box', 5, 60.00)) AS l(product, quantity, price_unit);

-- step: the accountant corrects the invoice's partner
UPDATE account_invoice SET partner_id = 2 WHERE id = 1;

-- step: the salesperson adds a third line
INSERT INTO account_invoice_line (invoice_id, product, quantity, price_unit)
VALUES (1, 'Varnish, 1 l', 2, 18.50);

-- step: the invoice is posted and gets its number
UPDATE account_invoice SET state = 'posted', number = 'INV/2026/0001' WHERE id = 1;

-- step: the warehouse moves three products in one batch
INSERT INTO stock_move (product, quantity, location, destination, reference) VALUES
    ('Oak board 2 m', 50, 'WH/Stock', 'Partners/Customers', 'INV/2026/0001'),
    ('Wood screws, box', 5, 'WH/Stock', 'Partners/Customers', 'INV/2026/0001'),
    ('Oak board 2 m', 20, 'WH/Input', 'WH/Stock', 'PO/2026/0042');

-- step: the workshop starts the work order
UPDATE work_order SET status = 'progress', operator = 'Rūta' WHERE id = 1;
