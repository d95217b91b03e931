-- 004_blocks_blobs: rich message content (tool calls and results, images,
-- thinking) and the images it holds, each kept once per content hash.
--
-- Same rules as 001_init: applied inside the store's migration transaction, no
-- BEGIN/COMMIT here, plain types that PostgreSQL accepts as well (its copy is
-- schema_pg/003_blocks_blobs.sql). What goes in these columns is written and
-- read by src/store/blocks.c (see blocks.h).

-- NULL for a plain-text message (every message written before this migration),
-- else the canonical content array (llm/content.h) as JSON text, with each
-- base64 image source replaced by {"type":"chatd_blob","sha256":...,
-- "media_type":...}. content keeps the text part, so what reads only text
-- (the seed history endpoint, the export of an older chatd) needs no change.
ALTER TABLE messages ADD COLUMN blocks TEXT;

-- The reply copy of an idempotency record carries the reply's blocks whole
-- (images inline): the record must replay even after the session's messages,
-- and with them their images, are gone.
ALTER TABLE idempotency ADD COLUMN reply_blocks TEXT;

-- One row per distinct image: the key is the SHA-256 of the decoded bytes
-- (lowercase hex). data is the base64 text as committed, not the decoded
-- bytes: a read returns exactly the committed text without re-encoding, and
-- both backends keep it as TEXT. bytes is the decoded size (for operators:
-- SUM(bytes) is what images take).
CREATE TABLE blobs (
    sha256             TEXT    NOT NULL PRIMARY KEY,
    media_type         TEXT    NOT NULL,               -- of the first message that brought it
    data               TEXT    NOT NULL,
    bytes              BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL
);

-- Which message references which blob. A blob with no row here is removed in
-- the transaction that removed its last reference (session delete, reset,
-- retention sweep).
CREATE TABLE message_blobs (
    message_id         INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    sha256             TEXT    NOT NULL REFERENCES blobs (sha256),
    PRIMARY KEY (message_id, sha256)
);

-- "Is this blob still referenced?" after a delete, and the foreign key's check.
CREATE INDEX message_blobs_sha256_idx ON message_blobs (sha256);
