"""One running guest seen from the host: SSH commands and files, its memory state, and the
triage of how it failed."""
