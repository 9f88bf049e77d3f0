"""asyncinfer-notifier: signed, retried webhook delivery of finished jobs (imports jobqueue only)."""
