"""Versioned Arrow schemas of every table the jobs write. Writers cast to these and refuse data
that does not fit; readers can rely on them. See schemas/README.md."""
