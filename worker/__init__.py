"""The worker: claim jobs, run the model in micro-batches, record results, drain on SIGTERM."""
