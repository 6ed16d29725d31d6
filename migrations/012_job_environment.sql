-- Where an `exec` job runs and what it adds to its environment.
-- `cwd`: the absolute working directory the job's program starts in (the enqueuing
-- caller's directory unless `--cwd` chose another); NULL for rows from before this
-- migration and for kinds that run no program: those start in the daemon's directory,
-- as before.
-- `env`: a JSON object of the variables given with `--env KEY=VALUE`, set on top of the
-- daemon's environment; NULL when none were given. The caller's own environment is never
-- stored (it may hold secrets).
ALTER TABLE job_queue ADD COLUMN cwd TEXT DEFAULT NULL;
ALTER TABLE job_queue ADD COLUMN env TEXT DEFAULT NULL;
