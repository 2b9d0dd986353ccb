-- 0001: jobs (every /imagine and button press), their hypernetworks, and the hypernetwork registry.
-- Times are unix seconds (REAL). Discord ids are INTEGER (snowflakes fit in int64).

CREATE TABLE jobs (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: buttons carry it in custom_id
    user_id                 INTEGER NOT NULL,
    guild_id                INTEGER,                            -- NULL in DMs
    channel_id              INTEGER NOT NULL,
    parent_job_id           INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    origin                  TEXT    NOT NULL CHECK (length(origin) BETWEEN 1 AND 32),
    prompt                  TEXT    NOT NULL,                   -- raw, as typed, tags included
    negative_prompt         TEXT    NOT NULL DEFAULT '',
    hypernets_json          TEXT    NOT NULL DEFAULT '[]',      -- [{name, sha256, multiplier}] in application order
    seed                    INTEGER NOT NULL,
    steps                   INTEGER NOT NULL CHECK (steps > 0),
    cfg_scale               REAL    NOT NULL,
    sampler                 TEXT    NOT NULL,
    width                   INTEGER NOT NULL CHECK (width > 0),
    height                  INTEGER NOT NULL CHECK (height > 0),
    count                   INTEGER NOT NULL CHECK (count > 0),
    checkpoint              TEXT    NOT NULL,
    status                  TEXT    NOT NULL DEFAULT 'queued'
                                    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    error_kind              TEXT,
    error_message           TEXT,
    attempts                INTEGER NOT NULL DEFAULT 0,
    created_at              REAL    NOT NULL,
    started_at              REAL,
    finished_at             REAL,
    duration_s              REAL,
    interaction_token       TEXT,                               -- cleared when the job finishes
    interaction_created_at  REAL,
    message_id              INTEGER,                            -- the message that shows the result
    image_paths_json        TEXT    NOT NULL DEFAULT '[]',      -- relative to the data dir
    warnings_json           TEXT    NOT NULL DEFAULT '[]'
);

-- /history: a user's jobs newest first, optionally in one guild (keyset pagination on id).
CREATE INDEX jobs_user_history ON jobs (user_id, id);
CREATE INDEX jobs_user_guild_history ON jobs (user_id, guild_id, id);
-- Reconcile after a restart (queued/running) and owner statistics.
CREATE INDEX jobs_status ON jobs (status, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
-- ON DELETE SET NULL looks children up by parent; without this index every delete scans the table.
CREATE INDEX jobs_parent ON jobs (parent_job_id) WHERE parent_job_id IS NOT NULL;

-- The same hypernetworks as jobs.hypernets_json, one row each, so history can be filtered by name with an index.
CREATE TABLE job_hypernets (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    multiplier  REAL    NOT NULL,
    PRIMARY KEY (job_id, position)
) WITHOUT ROWID;

CREATE INDEX job_hypernets_name ON job_hypernets (name COLLATE NOCASE, job_id);

-- The registry. A name is what users type in tags (A1111: the file stem, exact case).
CREATE TABLE hypernets (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    guild_id              INTEGER,                              -- NULL = global (bot owners), else that guild's
    sha256                TEXT    NOT NULL CHECK (length(sha256) = 64),
    file_name             TEXT    NOT NULL,                     -- canonical file named by hash
    file_size             INTEGER NOT NULL CHECK (file_size >= 0),
    sizes_json            TEXT    NOT NULL,
    layer_structure_json  TEXT    NOT NULL,
    activation            TEXT    NOT NULL,
    base_model            TEXT,
    description           TEXT    NOT NULL DEFAULT '',
    trigger_words         TEXT    NOT NULL DEFAULT '',
    default_multiplier    REAL    NOT NULL DEFAULT 1.0,
    preview_path          TEXT,
    enabled               INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    added_by              INTEGER,                              -- NULL when found in the models folder
    added_at              REAL    NOT NULL,
    source                TEXT    NOT NULL CHECK (source IN ('attachment', 'url', 'folder')),
    source_detail         TEXT,                                 -- the URL, or the path relative to the models folder
    updated_at            REAL    NOT NULL
);

-- Last line of defence for the name rule (the store also checks global-vs-guild collisions, which an index cannot).
CREATE UNIQUE INDEX hypernets_scope_name ON hypernets (ifnull(guild_id, 0), name COLLATE NOCASE);
CREATE UNIQUE INDEX hypernets_scope_sha256 ON hypernets (ifnull(guild_id, 0), sha256);
CREATE INDEX hypernets_name ON hypernets (name COLLATE NOCASE);
CREATE INDEX hypernets_sha256 ON hypernets (sha256);
CREATE INDEX hypernets_source ON hypernets (source, source_detail);
