"""Ray Data datasources. `MDSDatasource` reads MDS datasets; `read_mds` is its front door."""
