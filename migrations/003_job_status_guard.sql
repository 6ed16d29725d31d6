-- The original had no CHECK on status; ALTER TABLE cannot add one, so triggers refuse
-- any status outside the seed's four. (Migration 007 widens the set with `cancelled`.)
CREATE TRIGGER job_queue_status_insert BEFORE INSERT ON job_queue
WHEN NEW.status NOT IN ('pending', 'running', 'completed', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'job_queue.status: unknown status');
END;

CREATE TRIGGER job_queue_status_update BEFORE UPDATE OF status ON job_queue
WHEN NEW.status NOT IN ('pending', 'running', 'completed', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'job_queue.status: unknown status');
END;
