-- 0003: the rest of A1111's txt2img settings that decide a job's pixels (RenderSettings' new fields), and the
-- notes the bot attaches to a job when it is made (e.g. what a pasted parameters block asked for that is not rendered).
-- Jobs written before rendered with torch's CPU generator, so they keep rng 'CPU' (a reroll of an old job draws
-- its noise the way the original did); new jobs default to A1111's own default, 'GPU'.

ALTER TABLE jobs ADD COLUMN schedule TEXT NOT NULL DEFAULT 'Automatic';
ALTER TABLE jobs ADD COLUMN clip_skip INTEGER NOT NULL DEFAULT 1 CHECK (clip_skip BETWEEN 1 AND 12);
ALTER TABLE jobs ADD COLUMN rng TEXT NOT NULL DEFAULT 'GPU' CHECK (rng IN ('GPU', 'NV', 'CPU'));
ALTER TABLE jobs ADD COLUMN eta_noise_seed_delta INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN subseed INTEGER;                                  -- NULL: no variation seed
ALTER TABLE jobs ADD COLUMN subseed_strength REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN seed_resize_width INTEGER CHECK (seed_resize_width > 0);    -- both NULL or both set
ALTER TABLE jobs ADD COLUMN seed_resize_height INTEGER CHECK (seed_resize_height > 0);

ALTER TABLE jobs ADD COLUMN notes_json TEXT NOT NULL DEFAULT '[]';

UPDATE jobs SET rng = 'CPU';

-- A job's LoRAs, one row each in A1111's order, as resolved when the job was made (like job_hypernets).
CREATE TABLE job_loras (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    te          REAL    NOT NULL,                                 -- text-encoder multiplier
    unet        REAL    NOT NULL,                                 -- UNet multiplier
    dyn         INTEGER,                                          -- NULL: every rank
    short_hash  TEXT,                                             -- A1111's, for the infotext's "Lora hashes"
    PRIMARY KEY (job_id, position)
) WITHOUT ROWID;

CREATE INDEX job_loras_name ON job_loras (name COLLATE NOCASE, job_id);

-- The embeddings a job's prompts may use (the guild's embeddings whose names occur in them), as resolved then.
CREATE TABLE job_embeddings (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    short_hash  TEXT,                                             -- A1111's, for the infotext's "TI hashes"
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;
