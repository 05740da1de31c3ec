import pytest

from tests.backend.cluster import Cluster


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "store")
    yield c
    c.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random models for every role, in the real layouts (written once per session)."""
    pytest.importorskip("diffusers")
    from animate4d.backend.priors.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models"))
