-- homerd's queue on PostgreSQL: many daemons (one per home, on any number of hosts)
-- share one queue. Each daemon registers a worker row with its own incarnation number;
-- the incarnation plays the part the leader epoch plays on SQLite: every write about a
-- claimed job matches (claim_epoch = incarnation, claim_token), and every write
-- transaction first takes a share lock on its worker row and finds it unfenced.
--
-- Times are milliseconds since the Unix epoch on the SERVER's clock (homer_now_ms):
-- no host clock decides when a job is due or when a worker is stale.

CREATE FUNCTION homer_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE homer_workers (
    incarnation  BIGSERIAL PRIMARY KEY,
    -- host + home: one daemon per home per host (the home's flock guarantees it), so a
    -- new incarnation with the same name knows its predecessor is gone.
    name         TEXT   NOT NULL,
    host         TEXT   NOT NULL,
    boot_id      TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    start_time   BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    -- Last heartbeat or lease renewal, server clock.
    seen_at      BIGINT NOT NULL,
    -- The worker's own stale threshold: its runs' children are dead by
    -- (renewal sent) + stale_ms - margin on its monotonic clock.
    stale_ms     BIGINT NOT NULL,
    fenced_at    BIGINT,
    fenced_by    BIGINT,
    fence_reason TEXT,
    -- A clean exit: its jobs were released before this was set.
    stopped_at   BIGINT
);
CREATE INDEX homer_workers_live ON homer_workers (seen_at) WHERE fenced_at IS NULL AND stopped_at IS NULL;
CREATE INDEX homer_workers_name ON homer_workers (name);

CREATE TABLE job_queue (
    id                  BIGSERIAL PRIMARY KEY,
    lane                TEXT    NOT NULL DEFAULT 'default',
    kind                TEXT    NOT NULL,
    payload             TEXT    NOT NULL DEFAULT '[]',
    status              TEXT    NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    created_at          BIGINT  NOT NULL,
    started_at          BIGINT,
    completed_at        BIGINT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL DEFAULT 3,
    interruptions       INTEGER NOT NULL DEFAULT 0,
    runs                INTEGER NOT NULL DEFAULT 0,
    run_after           BIGINT  NOT NULL,
    run_after_set_at    BIGINT,
    timeout_ms          BIGINT,
    error               TEXT,
    errors              TEXT    NOT NULL DEFAULT '[]',
    result              TEXT,
    locked_by           TEXT,
    locked_at           BIGINT,
    heartbeat_at        BIGINT,
    claim_token         TEXT,
    claim_epoch         BIGINT,
    idempotency_key     TEXT,
    cancel_requested_at BIGINT,
    cwd                 TEXT,
    env                 TEXT
);
CREATE INDEX idx_queue_ready ON job_queue (lane, run_after, id) WHERE status = 'pending';
CREATE INDEX idx_queue_running ON job_queue (claim_epoch, lane) WHERE status = 'running';
CREATE UNIQUE INDEX idx_queue_key ON job_queue (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_queue_cancel ON job_queue (cancel_requested_at) WHERE cancel_requested_at IS NOT NULL;
CREATE INDEX idx_queue_terminal ON job_queue (completed_at) WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX idx_queue_status ON job_queue (status, created_at);

CREATE TABLE job_runs (
    id               BIGSERIAL PRIMARY KEY,
    job_id           BIGINT  NOT NULL REFERENCES job_queue (id) ON DELETE CASCADE,
    run              INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    epoch            BIGINT  NOT NULL,
    claim_token      TEXT    NOT NULL,
    worker           TEXT    NOT NULL,
    child_pid        BIGINT,
    child_pgid       BIGINT,
    child_boot_id    TEXT,
    child_start_time BIGINT,
    started_at       BIGINT  NOT NULL,
    ended_at         BIGINT,
    outcome          TEXT,
    error            TEXT,
    UNIQUE (job_id, run)
);
CREATE INDEX idx_runs_open ON job_runs (job_id) WHERE ended_at IS NULL;

CREATE TABLE metrics (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL DEFAULT 0
);
INSERT INTO metrics (name) VALUES
    ('stale_jobs_recovered'), ('heartbeat_failures'), ('workers_fenced'), ('jobs_pruned'),
    ('start_resource_failures');
