"""Jobs: submit, list, read, cancel."""
