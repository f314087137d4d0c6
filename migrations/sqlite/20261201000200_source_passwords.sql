-- A PostgreSQL segment's database password is no longer kept inside segments.source: the source holds the URL
-- without it, and the password is either sealed with the master key (like API keys given on stdin) or a reference
-- read at each use.
--   password_source      NULL (no password) | 'stored' | 'env' | 'file'
--   password_ref         environment variable name or file path ('env', 'file')
--   password_ciphertext  XChaCha20-Poly1305, associated data: the segment's id and its source ('stored')
--   password_nonce
-- Passwords that older versions stored inside segments.source are sealed by the first process that opens the store
-- with its master key (SQL cannot encrypt; see Store::open_configured), and the file is then rewritten (VACUUM) so
-- that no old page keeps them. Until then they stay where they are, and keep working.
ALTER TABLE segments ADD COLUMN password_source TEXT CHECK (password_source IN ('stored', 'env', 'file'));
ALTER TABLE segments ADD COLUMN password_ref TEXT;
ALTER TABLE segments ADD COLUMN password_ciphertext BLOB;
ALTER TABLE segments ADD COLUMN password_nonce BLOB;

-- One-time maintenance a process must still do when it opens the store, retried at each open until done.
CREATE TABLE upkeep (
    task   TEXT PRIMARY KEY,            -- 'vacuum': rewrite the file once no source holds a password in clear
    since  TEXT NOT NULL
);
-- Every store is rewritten once: a segment removed before this version may have left its password in a free page.
-- (For a new store, this is an empty file: instant.)
INSERT INTO upkeep (task, since) VALUES ('vacuum', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
