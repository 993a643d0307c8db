-- Work orders as a CARBOOK-like REST API wants them (camelCase on the wire).
CREATE TABLE service_order (
    id                serial PRIMARY KEY,
    business_id       integer NOT NULL,
    client_id         integer,
    client_vehicle_id integer,
    vehicle_number    text,
    status            text NOT NULL DEFAULT 'reserve',
    begin_datetime    timestamp,
    odometer_value    integer,
    comment           text
);
