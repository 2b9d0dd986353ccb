-- 0002: a job's hypernetworks are stored once, in job_hypernets (their JSON copy in jobs goes).
-- jobs.prompt now holds the prompt as the user typed it, hypernet tags where they were typed; rows written before
-- hold their normalised line (text, then one <hypernet:NAME:MULT> per hypernetwork), which reads the same way.

-- Rows of a version-1 database always have both copies (the store wrote them in one transaction); a job whose JSON
-- lists hypernetworks that job_hypernets lacks would lose them here, so they are copied over first.
INSERT OR IGNORE INTO job_hypernets (job_id, position, name, sha256, multiplier)
SELECT j.id, CAST(e.key AS INTEGER), json_extract(e.value, '$.name'), json_extract(e.value, '$.sha256'),
       json_extract(e.value, '$.multiplier')
FROM jobs j, json_each(j.hypernets_json) e;

ALTER TABLE jobs DROP COLUMN hypernets_json;
