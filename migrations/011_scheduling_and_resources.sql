-- When each job's `run_after` was last set, on homerd's effective clock. A forward step
-- of the wall clock moves every job still waiting for a `run_after` set before the step
-- forward by the step's size (so a delay is a delay), and only those: a time set after
-- the step is already on the new clock. NULL (rows from before this migration): the
-- job's `created_at` stands in, which is never later than the real setting time.
ALTER TABLE job_queue ADD COLUMN run_after_set_at INTEGER DEFAULT NULL;

-- Job starts that failed for the daemon's own reasons (out of file descriptors,
-- processes or memory, a full or read-only disk): the job went back to pending with its
-- attempt given back. And forward steps of the wall clock the daemon absorbed.
INSERT INTO metrics (name) VALUES ('start_resource_failures'), ('clock_steps');
