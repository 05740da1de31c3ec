import pytest

from tests.backend.cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "store")
    yield c
    c.stop()
