-- Why a subscription is switched off, as a value rather than a prefix of `reason`: `paused`
-- by an operator through the admin API (ended only by resume), or `gone` because its URL
-- answered 410 Gone (ended by resume or by a replay). Before this migration the kind was
-- told by whether `reason` began with "paused through the admin API at", which is how the
-- rows already here are classified; `reason` stays, as the text shown to people.
ALTER TABLE subscription_state ADD COLUMN state text;
UPDATE subscription_state
   SET state = CASE WHEN reason LIKE 'paused through the admin API at%' THEN 'paused'
                    ELSE 'gone' END;
ALTER TABLE subscription_state
    ALTER COLUMN state SET NOT NULL,
    ADD CONSTRAINT subscription_state_state CHECK (state IN ('paused', 'gone'));
