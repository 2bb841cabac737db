"""Golden values: tiny seeded models give the logits, losses and greedy codes recorded in tests/golden/.

A failure after a deliberate change of the model's numbers: regenerate with ``python tests/golden/make_golden.py``
and say why in the commit. The checks run from the inputs to the outputs, so the first one that fails names the
cause: the inputs (torch's generator), the initialisation, then the forward pass, then generation.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from golden.make_golden import CASES, MIN_MARGIN, REGENERATE, build_model, compute, load, metadata, path_of

CHECKS = [  # (key, tolerance, what changed when it fails); None: exact
    ("input.input_ids", None, "the seeded input generator"),
    ("input.attention_mask", None, "the golden inputs"),
    ("input.input_features", None, "the seeded input generator"),
    ("parameter_sums", 1e-6, "the initialisation (or the parameters' names and order)"),
    ("logits", 1e-5, "the forward pass"),
    ("loss", 1e-5, "the loss"),
    ("mel_loss", 1e-5, "the mel head's loss"),
    ("predicted_mel", 1e-5, "the mel head"),
    ("greedy_codes", None, "greedy generation"),
]
DIAGNOSTICS = {"greedy_margin"}  # recorded when the goldens were made, not a model output to compare


@pytest.fixture(scope="module")
def computed() -> dict[str, dict[str, torch.Tensor]]:
    return {name: compute(name) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_golden_file_records_its_origin_and_every_value(name, computed) -> None:
    assert path_of(name).exists(), f"missing golden file; run {REGENERATE}"
    info = metadata(name)
    assert info["regenerate"] == REGENERATE
    assert info["torch_version"] and info["transformers_version"]
    golden_keys = set(load(name)) - DIAGNOSTICS
    assert golden_keys == set(computed[name]) - DIAGNOSTICS, f"the recorded values changed; run {REGENERATE}"
    assert golden_keys <= {key for key, _, _ in CHECKS}


@pytest.mark.parametrize("name", list(CASES))
def test_model_reproduces_its_golden_values(name, computed) -> None:
    golden, actual = load(name), computed[name]
    origin = metadata(name)["torch_version"]
    for key, tolerance, what in CHECKS:
        if key not in golden:
            continue
        message = (
            f"{name}: {key} differs from the golden value (written with torch {origin}, now {torch.__version__}): "
            f"{what} changed. If that was intended, run {REGENERATE}."
        )
        if tolerance is None:
            assert torch.equal(actual[key], golden[key]), message
        else:
            torch.testing.assert_close(
                actual[key], golden[key], atol=tolerance, rtol=0, msg=lambda m, message=message: f"{message}\n{m}"
            )


def test_greedy_goldens_do_not_hinge_on_rounding() -> None:
    # Codes are compared exactly: every greedy pick won by a margin far above float noise when they were made.
    for name in CASES:
        golden = load(name)
        if "greedy_codes" in golden:
            assert float(golden["greedy_margin"]) >= MIN_MARGIN, name


@pytest.mark.parametrize("name", list(CASES))
def test_initialisation_depends_on_the_torch_seed_alone(name) -> None:
    states = []
    for other_seed in (1, 2):
        random.seed(other_seed)
        np.random.seed(other_seed)
        torch.manual_seed(other_seed)  # consumed before the model seeds itself
        torch.rand(other_seed)
        states.append(build_model(name).state_dict())
    for key, value in states[0].items():
        assert torch.equal(states[1][key], value), f"{name}: {key} depends on more than torch.manual_seed"
