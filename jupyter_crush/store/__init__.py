"""The transcript store: the journal on disk, pending writes, replay on open, queries."""
