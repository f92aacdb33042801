"""`make bench`: fan-out latency, connect rate, memory, and webhook ingest."""
