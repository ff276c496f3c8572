-- barto store, version 1 (SQLite).  Times: slot in unix seconds, every
-- *_at in unix microseconds, all UTC.

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
);

CREATE TABLE runs (
    id TEXT NOT NULL PRIMARY KEY,
    worker TEXT NOT NULL,
    schedule TEXT NOT NULL,
    slot INTEGER NOT NULL,
    `trigger` TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER NULL,
    created_at INTEGER NOT NULL,
    dispatched_at INTEGER NULL,
    started_at INTEGER NULL,
    ended_at INTEGER NULL,
    output_lines INTEGER NOT NULL DEFAULT 0
);

CREATE UNIQUE INDEX runs_identity ON runs (worker, schedule, slot);
CREATE INDEX runs_worker_slot ON runs (worker, slot);
CREATE INDEX runs_schedule_slot ON runs (schedule, slot);
CREATE INDEX runs_state_slot ON runs (state, slot);
CREATE INDEX runs_slot ON runs (slot);

CREATE TABLE commands (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    cmd TEXT NOT NULL,
    started_at INTEGER NULL,
    ended_at INTEGER NULL,
    exit_code INTEGER NULL,
    `signal` INTEGER NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE output (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line INTEGER NOT NULL,
    cmd INTEGER NOT NULL,
    stream TEXT NOT NULL,
    at INTEGER NOT NULL,
    data TEXT NOT NULL,
    cut INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq, line)
);

CREATE TABLE workers (
    name TEXT NOT NULL PRIMARY KEY,
    hostname TEXT NOT NULL DEFAULT '',
    os TEXT NOT NULL DEFAULT '',
    os_version TEXT NOT NULL DEFAULT '',
    kernel TEXT NOT NULL DEFAULT '',
    version TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    connected_since INTEGER NULL,
    last_seen INTEGER NULL
);

CREATE TABLE schedule_marks (
    worker TEXT NOT NULL,
    schedule TEXT NOT NULL,
    last_slot INTEGER NOT NULL,
    PRIMARY KEY (worker, schedule)
);
