-- easehook's shared store, version 4: what the console's filters need.
--
-- The users of an event (`from_user`, `to_user` as SPEC §5 normalizes
-- them), so that the events of one user are found through an index;
-- events stored before this version have none and are not found by user.

ALTER TABLE events ADD COLUMN from_user text, ADD COLUMN to_user text;
CREATE INDEX events_from ON events (from_user, received_at);
CREATE INDEX events_to ON events (to_user, received_at);
