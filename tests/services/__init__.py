"""Tests of the event-driven services against real NATS, S3 and Redis servers."""
