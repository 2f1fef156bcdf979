"""minicloud scheduling service: workloads, queues, quotas and topology-aware gang placement."""
