"""A job's curves as a PNG, for notebooks and reports."""
