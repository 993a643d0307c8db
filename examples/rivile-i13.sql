-- Payment adjustments of sales and purchase documents, as Rivile GAMA's I13 table keeps
-- them (EDIT_I13): the document's operation code, the line, the account and the amount.
CREATE TABLE account_payment (
    id             serial PRIMARY KEY,
    invoice_number text NOT NULL,               -- I13_KODAS_PO
    line_no        integer NOT NULL DEFAULT 1,  -- I13_EIL_NR
    account_code   text NOT NULL,               -- I13_KODAS_SS
    amount         numeric(12, 2) NOT NULL      -- I13_SUMA
);
-- A delete must name the document and line it removes: the old row is needed.
ALTER TABLE account_payment REPLICA IDENTITY FULL;
