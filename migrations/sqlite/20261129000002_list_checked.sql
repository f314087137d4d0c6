-- When a run last saw each target's list in Iterable, so runs with nothing to send can still notice, now and
-- then, that a list was deleted.
ALTER TABLE targets ADD COLUMN list_checked_at TEXT;
