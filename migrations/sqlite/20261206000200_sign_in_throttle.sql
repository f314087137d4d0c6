-- Sign-in throttling and the failed sign-ins' audit, in the store (issue 15), so that every daemon sharing it
-- counts the same attempts. Times are unix milliseconds (integers), so the SQL is the same on SQLite and PostgreSQL.
--
-- sign_in_limits: one row per key a password attempt counts against ('client C', 'account A', 'account A client C';
-- C is a client address, an IPv6 client its /64; A is a hash of the name typed, never the name). Each is a
-- generic cell rate: due_at is when the key's allowance is next whole again plus one period, advanced by one
-- period per attempt, and an attempt is let through while due_at lies at most (burst - 1) periods ahead; the
-- check and the count are one statement. failed_at (client keys): the last wrong password from that client, which
-- decides whether it is a client "that has not failed". A row whose expires_at passed says nothing any more and is
-- deleted.
CREATE TABLE sign_in_limits (
    key         TEXT PRIMARY KEY,
    due_at      INTEGER NOT NULL,
    failed_at   INTEGER,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sign_in_limits_by_expiry ON sign_in_limits (expires_at);

-- Failed sign-ins are audited once a minute per (name typed, client): the first makes an audit row, the others of
-- that minute add to its count. audit_windows holds, per such key (hashed like the above), the row that counts them
-- and when its minute began.
CREATE TABLE audit_windows (
    key       TEXT PRIMARY KEY,
    audit_id  INTEGER,
    since     INTEGER NOT NULL
);
CREATE INDEX audit_windows_by_start ON audit_windows (since);

-- How many times what an audit row says happened (1 but for failed sign-ins counted into one row).
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
