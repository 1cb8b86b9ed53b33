"""The run directory: commits, recovery, resume checks, object storage, repair."""
