-- The seed's migration, with its meaning kept exactly: three lock columns, the two
-- stale-job indexes, and every job left `running` by a daemon that predates locking
-- marked failed, since nothing can tell whether it is still executing.
-- `_migration_clock` is a temp table the migration runner fills from the daemon's
-- injectable clock (no strftime('now') in SQL).
ALTER TABLE job_queue ADD COLUMN locked_by TEXT DEFAULT NULL;
ALTER TABLE job_queue ADD COLUMN locked_at INTEGER DEFAULT NULL;
ALTER TABLE job_queue ADD COLUMN heartbeat_at INTEGER DEFAULT NULL;

CREATE INDEX idx_queue_stale ON job_queue(status, heartbeat_at) WHERE status = 'running';
CREATE INDEX idx_queue_locked_by ON job_queue(locked_by) WHERE locked_by IS NOT NULL;

UPDATE job_queue
SET status = 'failed',
    error = 'Daemon restarted during job execution (migration cleanup)',
    completed_at = (SELECT now_ms FROM temp._migration_clock)
WHERE status = 'running';
