-- The mass-addition guard. A target's list counts as filled once a run completed with it: until then the guard
-- leaves it alone, so an interrupted first fill resumes without stopping. Targets of exports that completed a run
-- before this change count as filled from the last run that completed with them, or else (history pruned) from
-- the export's last completed run: were that wrong, the guard errs on the side of stopping and saying why.
ALTER TABLE targets ADD COLUMN filled_at TEXT;
UPDATE targets SET filled_at = COALESCE(
    (SELECT MAX(r.finished_at) FROM runs r JOIN run_targets rt ON rt.run_id = r.id
      WHERE rt.target_id = targets.id AND r.status = 'succeeded'),
    (SELECT MAX(r.finished_at) FROM runs r WHERE r.export_id = targets.export_id AND r.status = 'succeeded'));
-- A run request may let a run through the guard, as `allow_mass_removal` does for the removal guard.
ALTER TABLE run_requests ADD COLUMN allow_mass_addition INTEGER NOT NULL DEFAULT 0;
