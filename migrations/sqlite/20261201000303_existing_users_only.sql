-- `export add --existing-users-only` (issue 9): subscribes carry `updateExistingUsersOnly: true`, so members who are
-- not yet users of the (hybrid or userID-based) project are not created. Existing exports create users as before.
ALTER TABLE exports ADD COLUMN existing_users_only INTEGER NOT NULL DEFAULT 0 CHECK (existing_users_only IN (0, 1));
