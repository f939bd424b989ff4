-- Engine time attributed to each request, in microseconds (reports show milliseconds):
-- kept per event and summed in rollups. Microseconds so that sums of many short requests
-- do not round away.
ALTER TABLE usage_events ADD COLUMN compute_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups ADD COLUMN compute_us INTEGER NOT NULL DEFAULT 0;
