-- Operator commands.
-- Idempotent enqueue: a job may carry a unique key; enqueueing the same key again returns
-- the existing job instead of creating one.
ALTER TABLE job_queue ADD COLUMN idempotency_key TEXT DEFAULT NULL;
CREATE UNIQUE INDEX idx_queue_key ON job_queue(idempotency_key) WHERE idempotency_key IS NOT NULL;

-- `homerd cancel` of a running job: the CLI never writes under the daemon's feet; it
-- files a request here, and the daemon (which owns the run) stops it and records it.
ALTER TABLE job_queue ADD COLUMN cancel_requested_at INTEGER DEFAULT NULL;
CREATE INDEX idx_queue_cancel ON job_queue(cancel_requested_at) WHERE cancel_requested_at IS NOT NULL;

-- Retention prunes terminal jobs by age.
CREATE INDEX idx_queue_terminal ON job_queue(completed_at) WHERE status IN ('completed', 'failed', 'cancelled');
CREATE INDEX idx_runs_job ON job_runs(job_id);

-- Counters the seed asked for, kept by the daemon (epoch-guarded writes). A fenced daemon
-- cannot write by design: its refused writes show in its `daemon.fenced` event, and the
-- daemon that fenced it counts a takeover here.
CREATE TABLE metrics (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
);
INSERT INTO metrics (name) VALUES
    ('lock_reacquire_failures'),
    ('stale_jobs_recovered'),
    ('heartbeat_failures'),
    ('takeovers'),
    ('jobs_pruned');
