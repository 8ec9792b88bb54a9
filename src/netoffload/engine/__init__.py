"""Software implementation of every offload task: pure functions over batches, no I/O."""
