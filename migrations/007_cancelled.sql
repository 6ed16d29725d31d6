-- `cancelled`: a terminal status set by an operator.
DROP TRIGGER job_queue_status_insert;
DROP TRIGGER job_queue_status_update;

CREATE TRIGGER job_queue_status_insert BEFORE INSERT ON job_queue
WHEN NEW.status NOT IN ('pending', 'running', 'completed', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'job_queue.status: unknown status');
END;

CREATE TRIGGER job_queue_status_update BEFORE UPDATE OF status ON job_queue
WHEN NEW.status NOT IN ('pending', 'running', 'completed', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'job_queue.status: unknown status');
END;
