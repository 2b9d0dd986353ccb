-- 0004: one registry for every add-on model kind (hypernetworks, LoRAs, textual-inversion embeddings).
-- What differs between kinds (a hypernetwork's layer sizes, a LoRA's format and family, an embedding's vector count)
-- lives in details_json, a JSON object the store writes and reads for each kind; everything an admin manages
-- (name, scope, description, default multiplier, enabled, source) is a column, as before.  The hypernetworks move
-- over unchanged: same ids, names, files and settings.  Names are unique per kind within what a guild sees, and one
-- file is one model per kind and scope.

CREATE TABLE models (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                  TEXT    NOT NULL CHECK (kind IN ('hypernet', 'lora', 'embedding')),
    name                  TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    guild_id              INTEGER,                              -- NULL = global (bot owners), else that guild's
    sha256                TEXT    NOT NULL CHECK (length(sha256) = 64),
    file_name             TEXT    NOT NULL,                     -- canonical file named by hash
    file_size             INTEGER NOT NULL CHECK (file_size >= 0),
    details_json          TEXT    NOT NULL CHECK (json_valid(details_json) AND json_type(details_json) = 'object'),
    base_model            TEXT,
    description           TEXT    NOT NULL DEFAULT '',
    trigger_words         TEXT    NOT NULL DEFAULT '',
    default_multiplier    REAL    NOT NULL DEFAULT 1.0,         -- a LoRA's default strength; unused for embeddings
    preview_path          TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    added_by              INTEGER,                              -- NULL when found in a models folder
    added_at              REAL    NOT NULL,
    source                TEXT    NOT NULL CHECK (source IN ('attachment', 'url', 'folder')),
    source_detail         TEXT,                                 -- the URL, or the path relative to the models folder
    updated_at            REAL    NOT NULL
);

INSERT INTO models (id, kind, name, guild_id, sha256, file_name, file_size, details_json, base_model, description,
                    trigger_words, default_multiplier, preview_path, enabled, added_by, added_at, source, source_detail,
                    updated_at)
SELECT id, 'hypernet', name, guild_id, sha256, file_name, file_size,
       json_object('sizes', json(sizes_json), 'layer_structure', json(layer_structure_json), 'activation', activation),
       base_model, description, trigger_words, default_multiplier, preview_path, enabled, added_by, added_at, source,
       source_detail, updated_at
FROM hypernets;

DROP TABLE hypernets;

-- Last line of defence for the name rule (the store also checks global-vs-guild collisions, which an index cannot).
CREATE UNIQUE INDEX models_scope_name ON models (kind, ifnull(guild_id, 0), name COLLATE NOCASE);
CREATE UNIQUE INDEX models_scope_sha256 ON models (kind, ifnull(guild_id, 0), sha256);
CREATE INDEX models_name ON models (kind, name COLLATE NOCASE);
CREATE INDEX models_sha256 ON models (sha256);
CREATE INDEX models_source ON models (kind, source, source_detail);

-- The hypernetworks as the table of schema versions 1-3 showed them, for scripts and tools written against it
-- (read-only; the bot itself reads and writes `models`).
CREATE VIEW hypernets AS
SELECT id, name, guild_id, sha256, file_name, file_size,
       json_extract(details_json, '$.sizes') AS sizes_json,
       json_extract(details_json, '$.layer_structure') AS layer_structure_json,
       json_extract(details_json, '$.activation') AS activation,
       base_model, description, trigger_words, default_multiplier, preview_path, enabled, added_by, added_at, source,
       source_detail, updated_at
FROM models WHERE kind = 'hypernet';
