-- easehook's shared store, version 3: every attempt of every delivery,
-- kept with it and pruned with it (as `attempts` in the embedded store).

CREATE TABLE attempts (
    delivery_id bigint NOT NULL,
    -- 1 for the first; numbers go on across retries of a dead delivery.
    n           integer NOT NULL,
    started_at  bigint NOT NULL,
    duration_ms bigint NOT NULL,
    -- sent, retry or dead.
    outcome     text NOT NULL,
    -- The HTTP status or SMTP reply code, when the destination answered.
    code        integer,
    -- At most 1,000 characters.
    error       text,
    PRIMARY KEY (delivery_id, n)
);
