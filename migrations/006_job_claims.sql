-- Fenced claims: each running row carries a random claim token and the leader epoch it
-- was claimed under. Every write by a worker is guarded by owner + token + epoch.
ALTER TABLE job_queue ADD COLUMN claim_token TEXT DEFAULT NULL;
ALTER TABLE job_queue ADD COLUMN claim_epoch INTEGER DEFAULT NULL;

-- Claim order: FIFO by (run_after, id) within a lane, pending rows only.
CREATE INDEX idx_queue_ready ON job_queue(lane, run_after, id) WHERE status = 'pending';
