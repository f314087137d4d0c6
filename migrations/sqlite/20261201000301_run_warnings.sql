-- Warnings of a run that are neither its error nor about one member, each said once per run: e.g. the fields
-- Iterable dropped (`filteredOutFields`) because the project does not accept new fields.
CREATE TABLE run_warnings (
    run_id   INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    warning  TEXT NOT NULL,
    PRIMARY KEY (run_id, warning)
);
