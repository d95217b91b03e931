-- 005_turn_locks_in_memory: a session's turn lock is no longer a row.
--
-- One chatd server process owns a SQLite file (a second one is refused at
-- start), so turn locks live in that process's memory (src/store/turn_locks.h)
-- and a turn no longer writes and deletes a lock row. A row left by an older
-- chatd belonged to a process that is gone: the table goes with them.
-- PostgreSQL, shared by many servers, keeps its turn_locks table.
DROP TABLE IF EXISTS turn_locks;
