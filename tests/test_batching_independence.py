"""A text's answer must not depend on the texts run beside it."""

from __future__ import annotations

import numpy as np

from edgeclin import runtime


def test_dynamic_int8_answers_do_not_depend_on_the_batch(bundle, demo_folder):
    from edgeclin.data import read_split
    from edgeclin.schema import Columns

    model = runtime.load(bundle, backend="onnxruntime")
    assert model.spec.rows_per_run == 1  # dynamic int8: activation scales come from the whole input
    texts = [e.text for e in read_split(demo_folder / "test.csv", "test", Columns()).examples]
    together = model.predict(texts, batch_size=32).probabilities
    alone = np.stack([model.predict([t]).probabilities[0] for t in texts])
    assert np.array_equal(together, alone)


def test_fp32_bundles_batch_freely(lora_run, tmp_path):
    from edgeclin.export import export

    fp32 = runtime.load(export(lora_run.output, tmp_path / "fp32", quiet=True).bundle, backend="onnxruntime")
    assert fp32.spec.rows_per_run is None
    texts = ["a productive cough at night", "knee pain after a fall on the stairs", "chest pain"]
    together = fp32.predict(texts, batch_size=8).probabilities
    alone = np.stack([fp32.predict([t]).probabilities[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-5)  # padding is masked: the same up to float rounding
