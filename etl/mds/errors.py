"""Errors raised for MDS data that cannot be trusted. Each names the file and what is wrong."""


class MDSError(ValueError):
    """A dataset, index or shard file that breaks the MDS format (or lies about itself)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class UnsafeEncodingError(MDSError):
    """A column whose decoding could run arbitrary code (pickle) and the caller did not opt in."""
