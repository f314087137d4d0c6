-- Fields mirror the source (issue 9). How an export sends a NULL: 'clear' sends `null` (Iterable clears the field),
-- 'skip' leaves the field out (Iterable keeps what it has). Existing exports keep what they did: 'skip'. New exports
-- get 'clear' from the CLI.
ALTER TABLE exports ADD COLUMN null_fields TEXT NOT NULL DEFAULT 'skip' CHECK (null_fields IN ('clear', 'skip'));

-- The type the user fixed for a field (`--field COL:TYPE`), NULL when none; and the type a field was first sent as,
-- remembered so later runs encode it the same way (Iterable fixes a field's type at its first value).
ALTER TABLE export_fields ADD COLUMN field_type TEXT
    CHECK (field_type IN ('string', 'long', 'double', 'boolean', 'date'));
ALTER TABLE export_fields ADD COLUMN sent_type TEXT
    CHECK (sent_type IN ('string', 'long', 'double', 'boolean', 'date', 'object', 'array'));
