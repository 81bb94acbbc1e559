"""``MesaNetConfig.solver_training`` / ``solver_inference``: plain dicts in the config (JSON), one
``SolverSettings`` in every Mesa layer and in every op call; legacy ``cg_*`` keys are mapped."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mesanet.layers import mesa_layer as mesa_layer_module
from mesanet.models import MesaNetConfig, MesaNetForCausalLM
from mesanet.ops import INFERENCE, TRAINING, SolverSettings

TRAIN = dict(max_iter=7, tol=0.0, preconditioner="jacobi")
INFER = dict(max_iter=3, tol=1e-3, preconditioner="none", decode="cg")


def config(**overrides) -> MesaNetConfig:
    fields = dict(
        vocab_size=31, hidden_size=16, num_hidden_layers=2, num_heads=2, head_dim=8, mixer_types=["hawk", "mesa"], chunk_size=4
    )
    return MesaNetConfig(**{**fields, **overrides})


def test_defaults_are_the_module_defaults_as_plain_dicts():
    c = config()
    assert c.solver_training == TRAINING.to_dict() and c.solver_inference == INFERENCE.to_dict()
    partial = config(solver_training=dict(max_iter=5))
    assert partial.solver_training == TRAINING.replace(max_iter=5).to_dict()  # stored complete
    assert config(solver_inference=INFERENCE.replace(tol=0.0)).solver_inference == INFERENCE.replace(tol=0.0).to_dict()


def test_json_round_trip(tmp_path):
    c = config(solver_training=TRAIN, solver_inference=INFER)
    c.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["solver_training"] == SolverSettings(**TRAIN).to_dict()
    loaded = MesaNetConfig.from_pretrained(tmp_path)
    assert loaded.solver_training == c.solver_training and loaded.solver_inference == c.solver_inference


class OpSpy:
    def __init__(self, real):
        self.real, self.solvers = real, []

    def __call__(self, *args, solver=None, **kwargs):
        self.solvers.append(solver)
        return self.real(*args, solver=SolverSettings(max_iter=2, tol=0.0), **kwargs)


def test_config_settings_reach_the_op_in_train_and_eval_mode(monkeypatch):
    spy = OpSpy(mesa_layer_module.mesa)
    monkeypatch.setattr(mesa_layer_module, "mesa", spy)
    model = MesaNetForCausalLM(config(solver_training=TRAIN, solver_inference=INFER))
    layer = model.model.layers[1].mixer
    assert layer.solver_training == SolverSettings(**TRAIN) and layer.solver_inference == SolverSettings(**INFER)
    ids = torch.randint(0, 31, (1, 6))
    model.train()(input_ids=ids)
    model.eval()(input_ids=ids, use_cache=False)
    assert spy.solvers == [SolverSettings(**TRAIN), SolverSettings(**INFER)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(solver_training=dict(max_iter=-1)),
            r"MesaNetConfig.solver_training: SolverSettings.max_iter: expected an integer >= 0, got -1",
        ),
        (dict(solver_inference=dict(tol=-1e-3)), r"MesaNetConfig.solver_inference: SolverSettings.tol"),
        (dict(solver_inference=dict(preconditioner="ilu")), r"MesaNetConfig.solver_inference: SolverSettings.preconditioner"),
        (dict(solver_training=dict(maxiter=3)), r"MesaNetConfig.solver_training: unknown solver setting\(s\) \['maxiter'\]"),
        (dict(solver_inference="cg"), r"MesaNetConfig.solver_inference: expected a dict of solver settings or None, got str"),
    ],
)
def test_bad_solver_values_raise_value_error_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_legacy_keys_are_mapped_onto_the_new_fields(tmp_path):
    legacy = dict(cg_max_iter_train=10, cg_tol_train=0.0, cg_max_iter_eval=30, cg_tol_eval=0.0, decode_solver="cg")
    with pytest.warns(DeprecationWarning, match=r"cg_max_iter_train -> solver_training.max_iter"):
        c = config(**legacy)
    assert c.solver_training == TRAINING.replace(max_iter=10, tol=0.0).to_dict()
    assert c.solver_inference == INFERENCE.replace(max_iter=30, tol=0.0, decode="cg").to_dict()
    # an old config.json (as written before the change) loads the same way
    c.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    del data["solver_training"], data["solver_inference"]
    path.write_text(json.dumps({**data, **legacy}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = MesaNetConfig.from_pretrained(tmp_path)
    assert loaded.solver_training == c.solver_training and loaded.solver_inference == c.solver_inference
    assert "cg_max_iter_train" not in json.loads(loaded.to_json_string())


def test_partial_legacy_keys_keep_the_old_defaults():
    with pytest.warns(DeprecationWarning):
        c = config(cg_max_iter_train=3)
    assert c.solver_training == TRAINING.replace(max_iter=3, tol=0.0).to_dict()  # old default: no tolerance
    assert c.solver_inference == INFERENCE.replace(max_iter=30, tol=0.0, decode="cg").to_dict()


def test_legacy_and_new_spelling_together_is_an_error():
    with pytest.raises(
        ValueError, match=r"MesaNetConfig.solver_training: given together with the legacy keys \['cg_max_iter_train'\]"
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            config(solver_training=dict(max_iter=3), cg_max_iter_train=3)
