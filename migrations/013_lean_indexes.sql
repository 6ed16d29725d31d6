-- Fewer index writes per job. A job's life (pending -> running -> completed)
-- used to rewrite up to eight indexes on job_queue and job_runs and fire a trigger at
-- each status change; every statement homerd runs was checked with EXPLAIN QUERY PLAN,
-- and these are the indexes its plans use. Each status now has one partial index, so a
-- transition moves one entry from one index to another:
--   pending   idx_queue_ready   (lane, run_after, id)       claims, lane heads, counts
--   running   idx_queue_running (status, lane)              running per lane, recovery
--   terminal  idx_queue_done    (completed_at, lane, status) retention, counts
-- (status leads idx_queue_running so that `status = 'running'` is a search on it, not
-- a guess: without statistics the planner takes a scan of an index it cannot bound for
-- a scan of the whole table.)
-- Renewals (heartbeat_at) and the lock columns (locked_by) touch no index any more.
DROP INDEX idx_queue_status;   -- (status, created_at): every status change, 2 writes
DROP INDEX idx_queue_lane;     -- (lane, status): every status change, 2 writes
DROP INDEX idx_queue_stale;    -- (status, heartbeat_at): also rewritten by every renewal
DROP INDEX idx_queue_locked_by; -- no statement looks rows up by owner
DROP INDEX idx_queue_terminal; -- replaced by idx_queue_done, which also counts
CREATE INDEX idx_queue_running ON job_queue(status, lane) WHERE status = 'running';
CREATE INDEX idx_queue_done ON job_queue(completed_at, lane, status)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- job_runs: UNIQUE (job_id, run) already indexes job_id, which finds a job's few runs;
-- idx_runs_job duplicated it, and idx_runs_open (job_id WHERE ended_at IS NULL) cost an
-- insert at every claim and a delete at every outcome.
DROP INDEX idx_runs_job;
DROP INDEX idx_runs_open;

-- The status guard on UPDATE ran a trigger program for every status change. Every
-- UPDATE homerd makes writes a status literal, or a value of its JobStatus type; the
-- INSERT guard stays, for rows made by hand or by older tools.
DROP TRIGGER job_queue_status_update;
