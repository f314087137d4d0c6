-- Run requests are rows (issue 17): the API, the console, trigger files and the schedule put a request here, and
-- whoever has a free slot claims it. At most one request per export waits (`queued`): a request made while one
-- waits merges into it (its options OR-ed), which is the "one follow-up run" rule. A claimed request points at the
-- run that took it, so "what became of my request" has an answer after a restart too.
CREATE TABLE run_requests (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    export_id           INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    trigger             TEXT NOT NULL,                 -- 'api' | 'schedule' | 'missed-schedule' | 'trigger-file' | ...
    requested_by        TEXT,                          -- the account that asked (API, console), else NULL
    note                TEXT,
    full_resync         INTEGER NOT NULL DEFAULT 0,
    allow_mass_removal  INTEGER NOT NULL DEFAULT 0,
    merged              INTEGER NOT NULL DEFAULT 0,    -- how many later requests merged into this one
    state               TEXT NOT NULL CHECK (state IN ('queued', 'started', 'not_started')),
    waiting_for         TEXT CHECK (waiting_for IN ('current_run', 'free_slot', 'another_process')),
    requested_at        TEXT NOT NULL,
    decided_at          TEXT,                          -- when it was started or refused
    claimed_by          TEXT,                          -- the process that took it
    run_id              INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    reason              TEXT                           -- why it did not start
);
CREATE UNIQUE INDEX run_requests_one_queued ON run_requests (export_id) WHERE state = 'queued';
CREATE INDEX run_requests_by_state ON run_requests (state, id);

-- Scheduled times already turned into a request: each (export, scheduled time) at most once, whoever's clock
-- fired it.
CREATE TABLE schedule_ticks (
    export_id  INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    due_at     TEXT NOT NULL,
    PRIMARY KEY (export_id, due_at)
);
