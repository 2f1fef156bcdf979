"""minicloud metering service: GPU-seconds per allocation, exactly once."""
