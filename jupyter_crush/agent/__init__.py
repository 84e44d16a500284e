"""The session agent: dispatch of prompts, a turn's records, compaction, titles, the
call and result types of a run, spending caps and sub-agents' turns."""
