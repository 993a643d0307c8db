-- Where an event goes when its subscription routes per event (a `url` with {{ … }} or a
-- `method` per operation, SPEC §4a): the URL and method rendered once at capture, sent on
-- every attempt. NULL (every event written before this migration, and every event of a
-- subscription that does not route) means the subscription's own URL and method.
--
-- On the event row rather than the delivery row: a routed event belongs to that one
-- subscription alone, and an event row is written once (and rewritten only by a replay that
-- renders an `unrendered` one), while a delivery row is updated on every claim and attempt;
-- keeping text columns off it keeps those HOT updates as narrow as they were. Nullable without a default, so adding them rewrites
-- nothing.
--
-- `unrendered`: the body is the plain envelope because the subscription's templates could
-- not render it (or its delivery went dead before they ran); `walhook replay` renders it
-- with the config of that moment, so a replay after a fix sends what the receiver expects.
-- NULL means the body is final.
ALTER TABLE event
    ADD COLUMN url text,
    ADD COLUMN method text,
    ADD COLUMN unrendered boolean;
