-- Keeps "this export put the member on the list" apart from "Iterable refused its last update", so a member we
-- subscribed is still unsubscribed when it leaves, whatever became of its later updates; and remembers when a
-- member was refused, so it is tried again once sync.retry_rejected_interval has passed (never for members
-- Iterable calls forgotten).
--   ours            1 when a subscribe of this member to the list was acknowledged by this export.
--   rejected_at     Unix seconds of the last refusal (state 'rejected'); NULL for members refused before this
--                   column existed, which are due for a retry at once.
--   retry_rejected  0 when Iterable refused the member as forgotten (GDPR): never sent again.
ALTER TABLE members ADD COLUMN ours INTEGER NOT NULL DEFAULT 1;
ALTER TABLE members ADD COLUMN rejected_at INTEGER;
ALTER TABLE members ADD COLUMN retry_rejected INTEGER NOT NULL DEFAULT 1;
-- Before this migration a rejected record may have overwritten a subscribed one; we cannot tell, so rejected
-- members are taken as not ours (never unsubscribed), as they were treated until now.
UPDATE members SET ours = 0 WHERE state = 'rejected';
-- Rejected members are few; the plan looks up the ones due for a retry through this index only.
CREATE INDEX members_rejected ON members (target_id, rejected_at) WHERE state = 'rejected';

-- Members that were on a list before an export adopted it (found by name, not created by it). A run never
-- unsubscribes them, nor counts them toward the mass-removal guard; they may still be sent field updates.
CREATE TABLE preexisting_members (
    target_id  INTEGER NOT NULL REFERENCES targets (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    PRIMARY KEY (target_id, email)
) WITHOUT ROWID;
