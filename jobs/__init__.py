"""Thin entry points for `ray job submit`: parse args, build a config, call `etl`."""
