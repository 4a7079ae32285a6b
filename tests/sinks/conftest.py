import pytest


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """A folder on local disk, then in a fresh bucket of the loopback S3 server."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("bucket") + "/root"


@pytest.fixture
def another_writer_after_our_look(monkeypatch):
    """`arrange(other, module)`: the next `open_table` that `module` calls finds no table, then
    `other()` (the racing writer) runs before our own create; every later look is real."""
    from etl.sinks import delta_commits

    real_open_table = delta_commits.open_table

    def arrange(other, module=delta_commits):
        looks = []

        def look_then_lose_the_race(uri):  # a caller may hold on to it: later looks are real
            looks.append(uri)
            if len(looks) > 1:
                return real_open_table(uri)
            assert real_open_table(uri) is None
            monkeypatch.setattr(module, "open_table", real_open_table)
            other()
            return None

        monkeypatch.setattr(module, "open_table", look_then_lose_the_race)

    return arrange  # monkeypatch undoes what is left at the test's end
