"""--lr auto: the range test's choice on known loss curves, its restoring of the weights, and a run with it."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from edgeclin.cli import main
from edgeclin.lr_range import LOWEST, STEPS, choose, multiplier_at, round_down, run_range_test
from edgeclin.training import TrainConfig, train


def test_rates_are_rounded_down_to_readable_values():
    assert [round_down(v) for v in (0.0031, 2e-3, 9.9e-4, 5.0, 1.7e-2)] == pytest.approx([2e-3, 2e-3, 5e-4, 5.0, 1e-2])


def test_the_choice_is_a_tenth_of_the_rate_at_the_lowest_loss_below_divergence():
    multipliers = [multiplier_at(step) for step in range(STEPS)]
    # falls until step 30, then climbs steeply: the lowest smoothed loss lags the raw one by a few steps
    losses = [2.0 - step / 20 if step <= 30 else 0.5 * math.exp((step - 30) / 2) for step in range(STEPS)]
    test = choose(multipliers, losses)
    lowest = multipliers.index(test.at_minimum)
    assert 28 <= lowest <= 34 and test.diverged_at is not None and test.diverged_at > test.at_minimum
    assert test.chosen == round_down(test.at_minimum / 10) and test.chosen * 10 <= test.diverged_at
    assert len(test.multipliers) == len(test.smoothed_losses) == STEPS


def test_a_loss_that_turns_infinite_diverges_there_and_one_that_only_falls_never_does():
    multipliers = [multiplier_at(step) for step in range(STEPS)]
    falling = [1.0 / (1 + step) for step in range(STEPS)]
    assert choose(multipliers, falling).diverged_at is None
    exploding = [*falling[:20], math.inf]
    test = choose(multipliers[:21], exploding)
    assert test.diverged_at == multipliers[20] and len(test.multipliers) == 20
    assert choose(multipliers[:3], [1.0, 1.0, 1.0]).chosen == LOWEST  # never below the scanned range
    with pytest.raises(ValueError):
        choose(multipliers[:1], [math.nan])


def test_the_range_test_puts_the_weights_back_and_stops_once_diverged():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    test = run_range_test(model, batches, lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1]),
                          [{"params": [model.weight, model.bias], "lr": 1.0}], max_grad_norm=None)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    # at 100x a rate of 1.0 plain regression blows up: the test stops before its last step
    assert test.diverged_at is not None and len(test.multipliers) < STEPS


def test_a_run_with_lr_auto_records_the_test_and_trains_at_its_choice(tiny_bert, demo_folder, tmp_path):
    options = dict(model=str(tiny_bert), data=str(demo_folder), epochs=1, max_length=48, precision="fp32",
                   progress=False, allow_degenerate=True)
    run = train(TrainConfig(output=str(tmp_path / "auto"), lr_auto=True, **options))
    resolved = json.loads((run.output / "run.json").read_text())["resolved"]
    test = resolved["lr_range_test"]
    assert test["base_lr"] == 2e-3 and test["lr"] == pytest.approx(2e-3 * test["chosen"])  # LoRA's default
    assert resolved["lr"] == pytest.approx(test["lr"]) and run.metrics["training"]["lr"] == pytest.approx(test["lr"])
    # the weights the run starts from are those of a run without the test: same rate, same result
    plain = train(TrainConfig(output=str(tmp_path / "plain"), lr=test["lr"], **options))
    assert plain.metrics["epochs"][0]["train_loss"] == pytest.approx(run.metrics["epochs"][0]["train_loss"])


def test_a_users_head_rate_stays_while_the_test_moves_the_rest(tiny_bert, demo_folder, tmp_path):
    run = train(TrainConfig(model=str(tiny_bert), data=str(demo_folder), output=str(tmp_path / "run"), epochs=1,
                            max_length=48, precision="fp32", progress=False, allow_degenerate=True, lr_auto=True,
                            method="prompt", num_virtual_tokens=4, head_lr=1e-3))
    resolved = json.loads((run.output / "run.json").read_text())["resolved"]
    assert resolved["head_lr"] == 1e-3 and resolved["lr_range_test"]["head_lr"] is None
    assert resolved["lr"] == pytest.approx(3e-2 * resolved["lr_range_test"]["chosen"])


def test_the_cli_takes_auto_or_a_positive_number():
    for value, message in (("fast", "neither a number nor auto"), ("0", "not above 0")):
        result = CliRunner().invoke(main, ["train", "--lr", value])
        assert result.exit_code == 2 and message in result.output
