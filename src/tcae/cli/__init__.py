"""The `tcae` command line."""
