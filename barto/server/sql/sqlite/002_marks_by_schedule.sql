-- Schema version 2: find the workers that ran a schedule (barto-cli cmd)
-- without reading every schedule mark.

CREATE INDEX schedule_marks_schedule ON schedule_marks (schedule, worker);
