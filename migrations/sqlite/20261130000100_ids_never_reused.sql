-- Ids of exports, targets and runs are never reused (AUTOINCREMENT): a run still going in a process that has not
-- noticed its export was removed must never find its ids handed to a new export. Also:
-- * exports are soft-deleted (`removed_at`), so a removed export's run history stays readable and its name can be
--   used again (unique among exports not removed);
-- * a segment removed from an export leaves its target behind, detached (`removed_at`), for the same reason, and
--   a target's segment may then be removed (`segment_id` becomes NULL);
-- * runs can be `cancelled`, asked for through `cancel_requested_at` from any process.
--
-- SQLite cannot change a primary key in place, so the tables are rebuilt. sqlx (0.8) runs every SQLite migration
-- inside a transaction, where `PRAGMA foreign_keys = OFF` has no effect, and dropping a parent table with foreign
-- keys on deletes its rows, which cascades into the child tables. So the child tables (export_fields, members,
-- run_targets, run_issues) are rebuilt too, each new table referencing the new parents: when the old tables are
-- dropped, children first, no foreign key of a new table points at them, and nothing cascades. Renaming the new
-- tables into place rewrites the references between them. All of it commits or none of it does.

CREATE TABLE exports_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL,
    connection_id  INTEGER REFERENCES connections (id) ON DELETE SET NULL,
    email_field    TEXT NOT NULL,
    on_leave       TEXT NOT NULL CHECK (on_leave IN ('remove', 'keep')),
    schedule       TEXT NOT NULL,                    -- 'refresh' | 'off' | a cron expression
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    removed_at     TEXT                              -- set by `export remove`; the row stays for the run history
);

CREATE TABLE export_fields_new (
    export_id       INTEGER NOT NULL REFERENCES exports_new (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    source_column   TEXT NOT NULL,
    iterable_field  TEXT NOT NULL,
    PRIMARY KEY (export_id, position)
);

CREATE TABLE targets_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    export_id        INTEGER NOT NULL REFERENCES exports_new (id) ON DELETE CASCADE,
    segment_id       INTEGER REFERENCES segments (id) ON DELETE SET NULL,   -- NULL once a detached target's segment is removed
    position         INTEGER NOT NULL,
    list_name        TEXT NOT NULL,
    list_id          INTEGER,
    list_checked_at  TEXT,
    removed_at       TEXT                            -- set when the segment is removed from the export
);

CREATE TABLE members_new (
    target_id    INTEGER NOT NULL REFERENCES targets_new (id) ON DELETE CASCADE,
    email        TEXT NOT NULL,
    fields_hash  INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('subscribed', 'rejected')),
    PRIMARY KEY (target_id, email)
) WITHOUT ROWID;

CREATE TABLE runs_new (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    export_id            INTEGER NOT NULL REFERENCES exports_new (id) ON DELETE CASCADE,
    trigger              TEXT NOT NULL,
    status               TEXT NOT NULL
                         CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'refused', 'cancelled')),
    full_resync          INTEGER NOT NULL DEFAULT 0,
    started_at           TEXT NOT NULL,
    finished_at          TEXT,
    error                TEXT,
    pid                  INTEGER,
    note                 TEXT,
    cancel_requested_at  TEXT                        -- set by `--cancel-run`; the running process polls it
);

CREATE TABLE run_targets_new (
    run_id          INTEGER NOT NULL REFERENCES runs_new (id) ON DELETE CASCADE,
    target_id       INTEGER NOT NULL REFERENCES targets_new (id) ON DELETE CASCADE,
    list_name       TEXT NOT NULL,
    list_id         INTEGER,
    source_rows     INTEGER NOT NULL DEFAULT 0,
    planned_add     INTEGER NOT NULL DEFAULT 0,
    planned_remove  INTEGER NOT NULL DEFAULT 0,
    unchanged       INTEGER NOT NULL DEFAULT 0,
    invalid         INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    added           INTEGER NOT NULL DEFAULT 0,
    removed         INTEGER NOT NULL DEFAULT 0,
    rejected        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, target_id)
);

CREATE TABLE run_issues_new (
    run_id     INTEGER NOT NULL REFERENCES runs_new (id) ON DELETE CASCADE,
    target_id  INTEGER NOT NULL REFERENCES targets_new (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('invalid', 'rejected')),
    member     TEXT,
    reason     TEXT NOT NULL
);

-- Parents first, keeping every id; rowids of run_targets and run_issues keep their order (reports sort by them).
INSERT INTO exports_new (id, name, connection_id, email_field, on_leave, schedule, enabled, created_at, updated_at)
    SELECT id, name, connection_id, email_field, on_leave, schedule, enabled, created_at, updated_at FROM exports;
INSERT INTO export_fields_new (export_id, position, source_column, iterable_field)
    SELECT export_id, position, source_column, iterable_field FROM export_fields;
INSERT INTO targets_new (id, export_id, segment_id, position, list_name, list_id, list_checked_at)
    SELECT id, export_id, segment_id, position, list_name, list_id, list_checked_at FROM targets;
INSERT INTO members_new (target_id, email, fields_hash, state)
    SELECT target_id, email, fields_hash, state FROM members;
INSERT INTO runs_new (id, export_id, trigger, status, full_resync, started_at, finished_at, error, pid, note)
    SELECT id, export_id, trigger, status, full_resync, started_at, finished_at, error, pid, note FROM runs;
INSERT INTO run_targets_new (rowid, run_id, target_id, list_name, list_id, source_rows, planned_add, planned_remove,
                             unchanged, invalid, duplicates, added, removed, rejected)
    SELECT rowid, run_id, target_id, list_name, list_id, source_rows, planned_add, planned_remove, unchanged, invalid,
           duplicates, added, removed, rejected FROM run_targets;
INSERT INTO run_issues_new (rowid, run_id, target_id, kind, member, reason)
    SELECT rowid, run_id, target_id, kind, member, reason FROM run_issues;

-- Children first: once they are gone, dropping a parent deletes rows no remaining table refers to.
DROP TABLE run_issues;
DROP TABLE run_targets;
DROP TABLE members;
DROP TABLE export_fields;
DROP TABLE runs;
DROP TABLE targets;
DROP TABLE exports;

ALTER TABLE exports_new RENAME TO exports;
ALTER TABLE export_fields_new RENAME TO export_fields;
ALTER TABLE targets_new RENAME TO targets;
ALTER TABLE members_new RENAME TO members;
ALTER TABLE runs_new RENAME TO runs;
ALTER TABLE run_targets_new RENAME TO run_targets;
ALTER TABLE run_issues_new RENAME TO run_issues;

-- AUTOINCREMENT continues above the largest id inserted; make that explicit for empty tables too, so the first new
-- id is above any id ever handed out that is still referenced anywhere.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'exports', COALESCE((SELECT MAX(id) FROM exports), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'exports');
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'targets', COALESCE((SELECT MAX(id) FROM targets), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'targets');
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'runs', COALESCE((SELECT MAX(id) FROM runs), 0)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'runs');

-- An export name is unique among exports not removed; a segment appears once among an export's attached targets.
CREATE UNIQUE INDEX exports_by_name ON exports (name) WHERE removed_at IS NULL;
CREATE UNIQUE INDEX targets_attached ON targets (export_id, segment_id) WHERE removed_at IS NULL;
CREATE INDEX targets_by_export ON targets (export_id, position);
CREATE INDEX runs_by_export ON runs (export_id, id);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX run_issues_by_run ON run_issues (run_id);
