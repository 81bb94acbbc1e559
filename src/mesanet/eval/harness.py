"""lm-evaluation-harness on MesaNet checkpoints.

A trained checkpoint (``runs/<name>/final``) is a plain Hugging Face causal LM, so the harness's ``hf`` model
works on it, but only once ``mesanet`` is imported: that registers ``model_type: mesanet`` with the Auto
classes. The stock ``lm_eval`` command does not import it and stops with "Transformers does not recognize this
architecture". This module is that same command with the registration done first::

    python -m mesanet.eval.harness --model hf --model_args pretrained=runs/mesanet/final --tasks lambada_openai

From Python, ``import mesanet`` and then call ``lm_eval.simple_evaluate(model="hf", ...)`` or build
``lm_eval.models.huggingface.HFLM(pretrained=...)`` directly. Needs the optional ``lm-eval[hf]`` package.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from .. import models  # noqa: F401  (registers MesaNet with AutoConfig / AutoModelForCausalLM)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the harness CLI (``argv``: its arguments; default ``sys.argv[1:]``) with MesaNet registered."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        raise SystemExit("lm-evaluation-harness is not installed: pip install 'lm-eval[hf]==0.4.13'") from None
    if argv is None:
        cli_evaluate()
        return
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
