-- Which process started a run (pid and a random token), so only that process finishes it: a run another process
-- marked interrupted is not silently overwritten. Runs from before this column have none.
ALTER TABLE runs ADD COLUMN owner TEXT;
