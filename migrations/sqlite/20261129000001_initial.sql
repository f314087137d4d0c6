-- The store: connections, segments, exports, what each export has put on its lists, and run history.
-- Times are RFC 3339 UTC text.

CREATE TABLE connections (
    id                   INTEGER PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    base_url             TEXT NOT NULL,
    region               TEXT,                        -- 'us' | 'eu' | NULL when --base-url was given
    usable_by            TEXT NOT NULL CHECK (usable_by IN ('admins', 'contributors')),
    key_source           TEXT NOT NULL CHECK (key_source IN ('env', 'file', 'stored')),
    key_ref              TEXT,                        -- env var name or file path; NULL for stored keys
    key_ciphertext       BLOB,                        -- XChaCha20-Poly1305, stored keys only
    key_nonce            BLOB,
    key_last4            TEXT,                        -- shown by `connection show`; only for stored keys
    privacy_accepted_at  TEXT NOT NULL,
    privacy_accepted_by  TEXT NOT NULL,
    verified_at          TEXT,
    created_at           TEXT NOT NULL
);

CREATE TABLE segments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    query       TEXT,
    created_at  TEXT NOT NULL
);

CREATE TABLE exports (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    connection_id  INTEGER REFERENCES connections (id) ON DELETE SET NULL,
    email_field    TEXT NOT NULL,
    on_leave       TEXT NOT NULL CHECK (on_leave IN ('remove', 'keep')),
    schedule       TEXT NOT NULL,                    -- 'refresh' | 'off' | a cron expression
    enabled        INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- Profile columns sent as Iterable dataFields.
CREATE TABLE export_fields (
    export_id       INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    source_column   TEXT NOT NULL,
    iterable_field  TEXT NOT NULL,
    PRIMARY KEY (export_id, position)
);

-- One per (export, segment): the Iterable list that mirrors the segment.
CREATE TABLE targets (
    id          INTEGER PRIMARY KEY,
    export_id   INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    segment_id  INTEGER NOT NULL REFERENCES segments (id),
    position    INTEGER NOT NULL,
    list_name   TEXT NOT NULL,
    list_id     INTEGER,                             -- found or created on the first run, then used for good
    UNIQUE (export_id, segment_id)
);

-- What Iterable has acknowledged for each target: the member's email and the hash of the fields it was sent with.
-- 'subscribed' members were put on the list by this export; 'rejected' ones were refused by Iterable.
CREATE TABLE members (
    target_id    INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    email        TEXT NOT NULL,
    fields_hash  INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('subscribed', 'rejected')),
    PRIMARY KEY (target_id, email)
) WITHOUT ROWID;

CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    export_id    INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    trigger      TEXT NOT NULL,                      -- 'manual' | 'schedule' | 'trigger-file' | ...
    status       TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'refused')),
    full_resync  INTEGER NOT NULL DEFAULT 0,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    error        TEXT,
    pid          INTEGER,
    note         TEXT
);
CREATE INDEX runs_by_export ON runs (export_id, id);
CREATE INDEX runs_by_status ON runs (status);

CREATE TABLE run_targets (
    run_id          INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    target_id       INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
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

-- Members a run did not send (invalid) or that Iterable refused (rejected), with the reason.
CREATE TABLE run_issues (
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    target_id  INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('invalid', 'rejected')),
    member     TEXT,                                 -- the email as found (may be empty or NULL)
    reason     TEXT NOT NULL
);
CREATE INDEX run_issues_by_run ON run_issues (run_id);
