-- The pre-locking job queue: the original daemon's job_queue made generic
-- (an INTEGER id, `kind` + JSON `payload` instead of executor/query/chat fields).
-- Times are milliseconds since the Unix epoch, written by the daemon's clock.
CREATE TABLE job_queue (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    lane         TEXT    NOT NULL DEFAULT 'default',
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL DEFAULT '[]',
    status       TEXT    NOT NULL DEFAULT 'pending',
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    result       TEXT
);
