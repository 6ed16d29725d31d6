-- The leader row: which process holds the database's current epoch, through which lock
-- file, and when it was last seen (wall clock for operators, a boot-relative monotonic
-- stamp for staleness on the same boot), and the stale threshold the holder runs with,
-- so every observer judges it by the promise it made. Exactly one row, id = 1.
CREATE TABLE leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    epoch       INTEGER NOT NULL,
    role        TEXT,
    pid         INTEGER,
    host        TEXT,
    boot_id     TEXT,
    start_time  INTEGER,
    lock_path   TEXT,
    lock_dev    INTEGER,
    lock_ino    INTEGER,
    acquired_at INTEGER,
    seen_at     INTEGER,
    seen_mono   INTEGER,
    stale_ms    INTEGER
);

INSERT INTO leader (id, epoch) VALUES (1, 0);
