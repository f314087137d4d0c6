-- Members identified by user id (issue 9, identity).
--
-- `members.email` and `preexisting_members.email` hold a member's identity key: its normalised email, or
-- `userId:` followed by its user id (a normalised email is lowercase, so it can never begin with `userId:`).
-- Existing rows are all emails, the identity of the email-based projects they were made for, so they stay as they are.
--
-- members.paired_email: the email a member identified by its user id was last sent with (it travels beside the
-- userId), NULL otherwise. A hybrid export recognises by it a member that keeps its email while its user id goes or
-- changes, and updates it instead of unsubscribing one member and subscribing another.
ALTER TABLE members ADD COLUMN paired_email TEXT;

-- exports.user_id_field: the source column holding the user id (userID-based and hybrid projects), NULL for none.
-- exports.email_field becomes optional for userID-based exports, where the email is an ordinary field: '' means
-- the export sends no email (the column is NOT NULL, and rebuilding the table is not worth that).
ALTER TABLE exports ADD COLUMN user_id_field TEXT;
