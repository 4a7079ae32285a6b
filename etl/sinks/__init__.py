"""Ray Data datasinks. `MDSDatasink` writes MDS; `write_mds` is its front door."""
