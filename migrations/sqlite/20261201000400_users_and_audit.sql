-- Team use (issue 10): accounts with roles, who may use an export, who a connection's scheduled runs run for, and
-- the audit trail. Existing stores keep working from the CLI, which acts as the local administrator.

CREATE TABLE users (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: export users and connections point at ids
    name               TEXT NOT NULL UNIQUE,
    role               TEXT NOT NULL CHECK (role IN ('admin', 'contributor')),
    token_hash         TEXT NOT NULL,                      -- hex SHA-256 of the API token's secret part; never the token
    token_created_at   TEXT NOT NULL,
    password_hash      TEXT,                               -- argon2id PHC string; NULL until `user password`
    created_at         TEXT NOT NULL
);

-- Who changed what, when and from where. Pruned after store.audit_retention.
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,                                -- a user name, or local:OSUSER for the CLI
    action   TEXT NOT NULL,                                -- e.g. 'export.add', 'user.token.rotate', 'export.run'
    target   TEXT,
    detail   TEXT,
    origin   TEXT NOT NULL                                 -- 'cli' or 'api ADDRESS'
);
CREATE INDEX audit_by_time ON audit (at);

-- The export users of an export: its creator and whoever an admin or an export user added.
CREATE TABLE export_users (
    export_id  INTEGER NOT NULL REFERENCES exports (id) ON DELETE CASCADE,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_by   TEXT NOT NULL,
    added_at   TEXT NOT NULL,
    PRIMARY KEY (export_id, user_id)
);

-- The account on whose behalf a connection's scheduled runs go: a user (export_user_id) or the local operator
-- (export_user_id NULL, export_user 'local:NAME'). The name is kept so a refusal can say who is gone.
ALTER TABLE connections ADD COLUMN export_user TEXT;
ALTER TABLE connections ADD COLUMN export_user_id INTEGER;
-- Connections made before accounts existed were made from the CLI: their export user is the local operator who
-- agreed to the privacy terms, so their scheduled runs go on as before.
UPDATE connections SET export_user = 'local:' || privacy_accepted_by;
