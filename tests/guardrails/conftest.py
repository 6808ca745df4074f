import pytest


@pytest.fixture(autouse=True)
def _guardrail_table_fresh():
    """The rule table is cached in process and cleared by saves; a test database flush sends no
    signal, so start and end every test with an empty cache."""
    from guardrails.selectors import guardrail_table_clear

    guardrail_table_clear()
    yield
    guardrail_table_clear()
