-- One row per run of a job (every claim): the attempt it counted as, the epoch and
-- token it ran under, the worker, the child's identity (pid, process group, boot id,
-- start time) recorded before the child is released, and how it ended.
CREATE TABLE job_runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL REFERENCES job_queue(id) ON DELETE CASCADE,
    run              INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    claim_token      TEXT    NOT NULL,
    worker           TEXT    NOT NULL,
    child_pid        INTEGER,
    child_pgid       INTEGER,
    child_boot_id    TEXT,
    child_start_time INTEGER,
    started_at       INTEGER NOT NULL,
    ended_at         INTEGER,
    outcome          TEXT,
    error            TEXT,
    UNIQUE (job_id, run)
);

CREATE INDEX idx_runs_open ON job_runs(job_id) WHERE ended_at IS NULL;
