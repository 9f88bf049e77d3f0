"""Test support shared by every tier: sample inputs, waiting, ports, a sync view of the job store."""
