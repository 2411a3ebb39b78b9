"""`fixture_set`: every test that takes it runs on each DeepLab2 fixture set."""
import pytest

from tests.checkpoints import fixtures


@pytest.fixture(scope='module', params=fixtures.SETS, ids=lambda s: s.name)
def fixture_set(request):
  """A `fixtures.FixtureSet`; the optional one is skipped when absent."""
  request.param.require()
  return request.param
