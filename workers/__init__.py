"""Periodic jobs (retraining) that run beside the stream workers."""
