-- Verify (issue 19): what a verify needs to tell a list that drifted from one still settling, and its record.
--
-- members.acked_at: Unix seconds when Iterable last acknowledged this member's subscribe; NULL for members
--   acknowledged before this version (taken as long ago).
ALTER TABLE members ADD COLUMN acked_at INTEGER;
-- A hybrid member is matched on its email too when a list is read.
CREATE INDEX members_by_paired_email ON members (target_id, paired_email) WHERE paired_email IS NOT NULL;
-- Members whose unsubscribe this export had acknowledged, with when (Unix seconds): a verify that finds one on
-- the list again calls it lingering. A member subscribed again leaves this table.
CREATE TABLE removed_members (
    target_id  INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    removed_at INTEGER NOT NULL,
    PRIMARY KEY (target_id, email)
) WITHOUT ROWID;
-- runs.kind: 'run'; 'verify', a list read from Iterable and compared with the segment and the export's memory;
-- 'verify_repair', a verify that then repaired what it found.
ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'run' CHECK (kind IN ('run', 'verify', 'verify_repair'));
-- What a verify found on each list: its verdict ('no_verdict' when the members read do not add up to the list's
-- size), the counts of each category, and a few examples of each.
CREATE TABLE run_verify (
    run_id        INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    target_id     INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    list_name     TEXT NOT NULL,
    list_id       INTEGER,
    verdict       TEXT NOT NULL CHECK (verdict IN ('clean', 'drifted', 'no_verdict')),
    read_members  INTEGER NOT NULL DEFAULT 0,
    list_size     INTEGER,
    missing       INTEGER NOT NULL DEFAULT 0,
    not_yet_sent  INTEGER NOT NULL DEFAULT 0,
    lingering     INTEGER NOT NULL DEFAULT 0,
    others        INTEGER NOT NULL DEFAULT 0,
    settling      INTEGER NOT NULL DEFAULT 0,
    note          TEXT,
    PRIMARY KEY (run_id, target_id)
);
CREATE TABLE run_verify_examples (
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    target_id  INTEGER NOT NULL,
    category   TEXT NOT NULL CHECK (category IN ('missing', 'not_yet_sent', 'lingering', 'others', 'settling')),
    member     TEXT NOT NULL
);
CREATE INDEX run_verify_examples_by_run ON run_verify_examples (run_id, target_id);
-- A run request may ask for a verify (`POST /api/v1/exports/NAME/verify`, the schedule's `sync.verify_interval`):
-- merged into the export's queued request like any other, its options OR-ed; `wants_run` keeps whether a run was
-- asked for too (a verify that does not repair sends nothing, so that run follows it).
ALTER TABLE run_requests ADD COLUMN wants_run INTEGER NOT NULL DEFAULT 1;
ALTER TABLE run_requests ADD COLUMN verify INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_requests ADD COLUMN repair INTEGER NOT NULL DEFAULT 0;
ALTER TABLE run_requests ADD COLUMN remove_lingering INTEGER NOT NULL DEFAULT 0;
