-- The kind of Iterable project a connection reaches (issue 9): 'email' (users identified by email), 'userid'
-- (by userId; an email identifies nobody) or 'hybrid' (by either). Connections made before this column were used
-- as email-based projects: they stay 'email'. New connections get 'hybrid' from the CLI unless told otherwise.
ALTER TABLE connections ADD COLUMN project_type TEXT NOT NULL DEFAULT 'email'
    CHECK (project_type IN ('email', 'userid', 'hybrid'));
