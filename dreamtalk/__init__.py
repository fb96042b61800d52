"""The `dreamtalk` command line; the work itself lives in engine/, server/ and export/."""
