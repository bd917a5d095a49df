"""The suite's oracles are installed: without torch and transformers, hundreds of tests skip
(they compare with transformers' GPT-2), and a run that skipped them must not pass for a run
that checked them. PYGPT_TESTS_WITHOUT_TORCH=1 says the skips are meant (a Python whose torch
wheel is not at hand)."""

import importlib.util
import os

import pytest

ORACLES = ("torch", "transformers", "peft", "jsonschema", "rfc3339_validator", "gguf")


@pytest.mark.skipif(os.environ.get("PYGPT_TESTS_WITHOUT_TORCH") == "1", reason="PYGPT_TESTS_WITHOUT_TORCH=1")
def test_the_test_extras_are_installed():
    missing = [name for name in ORACLES if importlib.util.find_spec(name) is None]
    assert not missing, f"pip install \".[test]\" first: {missing} missing, and the tests that need them skip"
