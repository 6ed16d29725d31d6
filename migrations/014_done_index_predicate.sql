-- idx_queue_done (013) said which rows it holds with `status IN ('completed', 'failed',
-- 'cancelled')`. SQLite evaluates a partial index's condition for the old and the new row
-- of every UPDATE that changes a column the index names, and an IN list there cost about
-- as much as the rest of the statement: a claim (pending -> running, never in this index)
-- and an outcome each took twice as long as without the index (bench raw loop, 32 jobs per
-- transaction: 26,000 jobs/s against 35,000-42,000). The same rows, named by three
-- equalities, cost a few comparisons. Statements that read the index (retention, counts)
-- name their rows with the same expression, which is how SQLite knows it may use it.
DROP INDEX idx_queue_done;
CREATE INDEX idx_queue_done ON job_queue(completed_at, lane, status)
    WHERE status = 'completed' OR status = 'failed' OR status = 'cancelled';
