-- Notifications (issue 18): channels owned by administrators, the exports subscribed to them, what each export (or
-- connection) is known to be in (so that a change of state is told once, with a reminder now and then), and the
-- outbox of notifications to deliver, written in the same transaction as the run's end.
CREATE TABLE channels (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT NOT NULL UNIQUE,
    kind               TEXT NOT NULL CHECK (kind IN ('webhook', 'slack', 'email')),
    -- Webhook and Slack: the URL, a credential, sealed with the master key. Email: the addresses, comma-separated.
    url_ciphertext     BLOB,
    url_nonce          BLOB,
    addresses          TEXT,
    -- Webhooks: where the signing secret comes from ('env' | 'file': a reference; 'stored': sealed).
    secret_source      TEXT CHECK (secret_source IN ('env', 'file', 'stored')),
    secret_ref         TEXT,
    secret_ciphertext  BLOB,
    secret_nonce       BLOB,
    usable_by          TEXT NOT NULL DEFAULT 'admins' CHECK (usable_by IN ('admins', 'contributors')),
    created_at         TEXT NOT NULL,
    created_by         TEXT NOT NULL
);

CREATE TABLE export_channels (
    export_id   INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    channel_id  INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    events      TEXT NOT NULL,                 -- the events it is told, comma-separated: 'failed,guard,recovered,key'
    PRIMARY KEY (export_id, channel_id)
);

-- A condition told and not over yet: an export's runs failing or stopped by a guard ('run'), too many rejected
-- members ('rejected'), a list differing from its segment ('drift'), a connection's key refused ('key').
CREATE TABLE notify_states (
    subject       TEXT NOT NULL,               -- 'export ID' or 'connection ID'
    topic         TEXT NOT NULL CHECK (topic IN ('run', 'rejected', 'drift', 'key')),
    state         TEXT NOT NULL,               -- for 'run': 'failed' or 'guard'; else the topic
    since         TEXT NOT NULL,
    last_told_at  TEXT NOT NULL,
    PRIMARY KEY (subject, topic)
);

CREATE TABLE notify_outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL,            -- the same on every channel and every retry of one event
    event            TEXT NOT NULL CHECK (event IN ('failed', 'guard', 'recovered', 'rejected', 'key', 'list', 'drift')),
    channel_id       INTEGER NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    export_name      TEXT,
    run_id           INTEGER,
    payload          TEXT NOT NULL,            -- the event as this channel is told it (JSON)
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'given_up')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    give_up_at       TEXT NOT NULL,
    claimed_by       TEXT,                     -- the process delivering it now, until claimed_until
    claimed_until    TEXT,
    last_answer      TEXT,                     -- what the receiver answered last (status, or why it could not be reached)
    finished_at      TEXT
);
CREATE INDEX notify_outbox_due ON notify_outbox (state, next_attempt_at);
CREATE INDEX notify_outbox_by_channel ON notify_outbox (channel_id, id);
