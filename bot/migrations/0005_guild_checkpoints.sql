-- 0005: per-server checkpoint choices.  Checkpoints themselves are the owner's (config.toml and the checkpoints
-- folder), so nothing here names a file: a row holds a server's choice about one checkpoint by its catalog name —
-- whether it is the server's default, and whether the server's admins have disallowed it.  A server with no rows
-- uses the owner's default and may use every installed checkpoint.

CREATE TABLE guild_checkpoints (
    guild_id    INTEGER NOT NULL,
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    is_default  INTEGER NOT NULL DEFAULT 0 CHECK (is_default IN (0, 1)),
    disallowed  INTEGER NOT NULL DEFAULT 0 CHECK (disallowed IN (0, 1)),
    updated_by  INTEGER,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (guild_id, name),
    CHECK (NOT (is_default = 1 AND disallowed = 1))
);

CREATE UNIQUE INDEX guild_checkpoints_one_default ON guild_checkpoints (guild_id) WHERE is_default = 1;
