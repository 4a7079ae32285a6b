"""`jobs.dedup`: duplicates within a curation output, and across its runs.

    buckets.py  one bucket of the input: samples beside what the last pass saw; candidate keys
    keys.py     the keys two candidates share: pixel key, pHash bands, embedding LSH bands
    compare.py  within a candidate group: each judged sample against the ones ranked before it
    run.py      the pass on Ray Data: keys -> groupby(key) -> groupby(sample_id) -> two tables
"""
