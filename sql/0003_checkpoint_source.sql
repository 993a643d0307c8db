-- Which source a checkpoint belongs to. Two sources sharing one outbox with the same slot
-- name would otherwise read and move each other's checkpoint: capture would skip or repeat
-- changes. Filled (and then compared) at every `setup` and `run` from IDENTIFY_SYSTEM; rows
-- written before this migration are empty here and belong to the first source that claims
-- them, which is the one that wrote them in every outbox walhook could have created.
ALTER TABLE checkpoint
    ADD COLUMN system_identifier text,
    ADD COLUMN database text;
