"""The session agent: dispatch of prompts, a turn's records, compaction, titles, and the
call and result types of a run."""
