"""``import mesanet`` and ``mesanet --help`` import neither torch nor transformers (the modeling stack loads on
first use), and the Auto classes still know ``model_type: mesanet`` whichever is imported first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_import_mesanet_and_the_cli_help_load_neither_torch_nor_transformers():
    out = python("""
        import sys
        import mesanet
        from mesanet import cli
        try:
            cli.main(["--help"])
        except SystemExit as e:
            assert e.code == 0
        heavy = sorted(m for m in ("torch", "transformers", "numpy", "mesanet.models.modeling_mesanet", "mesanet.layers") if m in sys.modules)
        print("HEAVY", heavy)
    """)
    assert out.strip().splitlines()[-1] == "HEAVY []"


# "auto model first": transformers' modeling_auto imports configuration_auto while half-executed; registering
# the model classes at that moment failed (the warning said so and AutoModelForCausalLM did not know mesanet)
FIRST_IMPORTS = {
    "mesanet first": "import mesanet\nimport transformers",
    "transformers first": "from transformers import AutoConfig\nimport mesanet",
    "modeling first": "import mesanet\nfrom mesanet.models import MesaNetForCausalLM",
    "auto model first": "import mesanet\nfrom transformers import AutoModelForCausalLM",
    "models package, then auto model": "from mesanet.models import preset_config\nfrom transformers import AutoModelForCausalLM",
    "auto model module loaded": "import transformers.models.auto.modeling_auto\nimport mesanet",
}


@pytest.mark.parametrize("order", list(FIRST_IMPORTS))
def test_the_auto_classes_know_mesanet_whatever_the_import_order(order):
    first = "import warnings\nwarnings.simplefilter('error')\n" + FIRST_IMPORTS[order]
    out = python(
        first
        + """
import sys
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
config = AutoConfig.for_model("mesanet", num_hidden_layers=1, mixer_types=["mesa"], vocab_size=64, hidden_size=32, num_heads=2, head_dim=16)
lm, base = AutoModelForCausalLM.from_config(config), AutoModel.from_config(config)
from mesanet.models import MesaNetConfig, MesaNetForCausalLM, MesaNetModel
assert type(config) is MesaNetConfig and type(lm) is MesaNetForCausalLM and type(base) is MesaNetModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
assert MODEL_FOR_CAUSAL_LM_MAPPING[MesaNetConfig] is MesaNetForCausalLM  # the stand-in replaced by the real class
print("OK")
"""
    )
    assert out.strip().endswith("OK")
