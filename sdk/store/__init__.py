"""The store: every run, step, mask, judge call and eval in DuckDB. Never imports torch."""
