-- The original daemon's two queue indexes.
CREATE INDEX idx_queue_status ON job_queue(status, created_at);
CREATE INDEX idx_queue_lane ON job_queue(lane, status);
