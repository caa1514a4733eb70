"""Live progress of a job as server-sent events."""
