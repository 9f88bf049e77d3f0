"""The HTTP API: validate inputs against the model signature, enqueue, report job state."""
