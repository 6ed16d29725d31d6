-- Retries: a per-job attempt budget, graceful-release interruptions (which give the
-- attempt back), a not-before time for backoff, a per-job timeout and the error history
-- (a JSON array of {at, attempt, run, error}).
ALTER TABLE job_queue ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;
ALTER TABLE job_queue ADD COLUMN interruptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_queue ADD COLUMN run_after INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_queue ADD COLUMN timeout_ms INTEGER DEFAULT NULL;
ALTER TABLE job_queue ADD COLUMN errors TEXT NOT NULL DEFAULT '[]';
ALTER TABLE job_queue ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;

UPDATE job_queue SET run_after = created_at;
