-- 006_session_indexes_ascending: the session list indexes in ascending order,
-- the owner one only over sessions that have an owner.
--
-- A new session has the newest created_at. In the descending indexes of 001
-- it went in at the left edge of the b-tree, where SQLite splits pages in
-- half (its quick append is for the right edge), so every commit of new
-- sessions rewrote two or three pages of each index (measured in the WAL).
-- Ascending, a new session is an append; the lists newest first walk the same
-- index backwards, as the oldest-first lists already did. Without
-- authentication no session has an owner, and the owner index no longer gets
-- an entry for each of them: owner = ? implies owner IS NOT NULL, so the
-- per-key lists still use it. PostgreSQL, whose b-trees have no such edge
-- cost, keeps its indexes.
DROP INDEX sessions_created_idx;
DROP INDEX sessions_owner_created_idx;
CREATE INDEX sessions_created_idx ON sessions (created_at, id);
CREATE INDEX sessions_owner_created_idx ON sessions (owner, created_at, id) WHERE owner IS NOT NULL;
