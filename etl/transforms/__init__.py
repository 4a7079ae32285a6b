"""CPU stages: frame decode / resize (more to come: prompt building)."""
