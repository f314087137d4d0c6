-- A run's subscribes counted by what they did to the list, not all as "added": a member new on the list is added;
-- one this export had put there already, sent again because a field changed (or `--full`), is updated; one that
-- was on the list when the export adopted it is already on the list. `planned_add` now holds the new members a run
-- planned and `planned_update` the others; runs recorded before this split keep every subscribe in `planned_add`
-- and `added`, as they were shown then.
ALTER TABLE run_targets ADD COLUMN planned_update INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_targets ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_targets ADD COLUMN already_on_list INTEGER NOT NULL DEFAULT 0;
