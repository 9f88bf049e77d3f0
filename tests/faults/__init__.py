"""Fault suite: each guarantee of the hardening issue proven with real processes and a real redis-server."""
