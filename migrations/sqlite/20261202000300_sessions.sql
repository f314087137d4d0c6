-- Web console sessions (issue 10): a signed-in browser holds a random session id in a cookie; only its SHA-256 is
-- kept here, so a copy of the store lets nobody sign in. Rows end with their account (ON DELETE CASCADE), at sign-out,
-- when the account's password changes, and once expired (pruned at each sign-in).
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_hash   TEXT NOT NULL UNIQUE,                    -- hex SHA-256 of the cookie's session id; never the id
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    TEXT NOT NULL,
    last_seen_at  TEXT NOT NULL,                           -- for the idle timeout (daemon.session_idle_timeout)
    expires_at    TEXT NOT NULL,                           -- absolute end (created_at + daemon.session_lifetime)
    origin        TEXT NOT NULL                            -- where the sign-in came from, e.g. 'api 127.0.0.1'
);
CREATE INDEX sessions_by_user ON sessions (user_id);
