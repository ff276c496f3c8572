-- barto store, version 1 (MariaDB).  Times: slot in unix seconds, every
-- *_at in unix microseconds, all UTC.

CREATE TABLE IF NOT EXISTS schema_version (
    version INT NOT NULL PRIMARY KEY,
    applied_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE runs (
    id CHAR(36) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    worker VARCHAR(128) NOT NULL,
    schedule VARCHAR(128) NOT NULL,
    slot BIGINT NOT NULL,
    `trigger` VARCHAR(16) NOT NULL,
    state VARCHAR(16) NOT NULL,
    reason TEXT NOT NULL,
    exit_code INT NULL,
    created_at BIGINT NOT NULL,
    dispatched_at BIGINT NULL,
    started_at BIGINT NULL,
    ended_at BIGINT NULL,
    output_lines INT NOT NULL DEFAULT 0,
    UNIQUE KEY runs_identity (worker, schedule, slot),
    KEY runs_worker_slot (worker, slot),
    KEY runs_schedule_slot (schedule, slot),
    KEY runs_state_slot (state, slot),
    KEY runs_slot (slot)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE commands (
    run_id CHAR(36) CHARACTER SET ascii NOT NULL,
    idx INT NOT NULL,
    cmd TEXT NOT NULL,
    started_at BIGINT NULL,
    ended_at BIGINT NULL,
    exit_code INT NULL,
    `signal` INT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (run_id, idx)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE output (
    run_id CHAR(36) CHARACTER SET ascii NOT NULL,
    seq INT NOT NULL,
    line INT NOT NULL,
    cmd INT NOT NULL,
    stream VARCHAR(6) NOT NULL,
    at BIGINT NOT NULL,
    data MEDIUMTEXT NOT NULL,
    cut INT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, seq, line)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE workers (
    name VARCHAR(128) NOT NULL PRIMARY KEY,
    hostname VARCHAR(255) NOT NULL DEFAULT '',
    os VARCHAR(255) NOT NULL DEFAULT '',
    os_version VARCHAR(255) NOT NULL DEFAULT '',
    kernel VARCHAR(255) NOT NULL DEFAULT '',
    version VARCHAR(255) NOT NULL DEFAULT '',
    address VARCHAR(255) NOT NULL DEFAULT '',
    connected_since BIGINT NULL,
    last_seen BIGINT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE schedule_marks (
    worker VARCHAR(128) NOT NULL,
    schedule VARCHAR(128) NOT NULL,
    last_slot BIGINT NOT NULL,
    PRIMARY KEY (worker, schedule)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
