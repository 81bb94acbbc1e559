"""Self-contained checkpoints: ``save_pretrained`` writes the modeling code (generated from the package) and
``auto_map``, so that a Python where ``import mesanet`` fails loads the folder with ``trust_remote_code=True``:
identical logits for every mixer kind, the recurrent cache and ``generate``, and the stock lm-eval ``hf`` model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_eval_lm_harness import DOCS, our_loglikelihood

from mesanet.models import MIXER_KINDS, MesaNetForCausalLM, preset_config
from mesanet.models.remote_code import AUTO_MAP, generated_sources

KINDS = sorted(MIXER_KINDS)

#: Prepended to every subprocess: any import of mesanet raises (the editable install's finder included).
BLOCK_MESANET = textwrap.dedent("""
    import sys

    class BlockMesanet:
        def find_spec(self, name, path=None, target=None):
            if name == "mesanet" or name.startswith("mesanet."):
                raise ImportError(f"{name} is blocked: this process must not use the installed package")
            return None

    sys.meta_path.insert(0, BlockMesanet())
""")


def run_blocked(code: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_MODULES_CACHE": str(tmp_path / "hf-modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "PYTHONPATH": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return subprocess.run(
        [sys.executable, "-c", BLOCK_MESANET + textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model with one layer of every mixer kind (and a tokenizer) saved with save_pretrained, and its reference
    outputs computed here with the package: logits, prefill + cached decoding steps, greedy generate."""
    from eval_helpers import build_tokenizer

    folder = tmp_path_factory.mktemp("remote") / "model"
    torch.manual_seed(0)
    config = preset_config(
        "tiny", mixer=KINDS, num_hidden_layers=len(KINDS), chunk_size=8, eos_token_id=0, pad_token_id=1, bos_token_id=0
    )
    model = MesaNetForCausalLM(config).eval()
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    ids = torch.randint(2, 300, (2, 21))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
        prefill = model(ids[:, :15], use_cache=True)
        cache, steps = prefill.past_key_values, [prefill.logits]
        for t in range(15, 21):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
        generated = model.generate(ids[:, :10], max_new_tokens=8, do_sample=False)
    torch.save(dict(ids=ids, logits=logits, steps=steps, generated=generated), folder.parent / "reference.pt")
    return folder


def test_the_folder_holds_the_generated_code_and_auto_map(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    sources = generated_sources()
    for name, text in sources.items():
        assert (saved / name).read_text() == text  # exactly what the package generates now
        assert "mesanet." not in "".join(line for line in text.splitlines() if line.lstrip().startswith(("from ", "import ")))
    assert {"modeling_mesanet.py", "configuration_mesanet.py", "mesa.py", "cg.py", "hawk.py", "attention.py"} <= set(sources)
    # generated from the package: the flat files keep the package's line numbers
    import mesanet.models.modeling_mesanet as package_module

    assert len(Path(package_module.__file__).read_text().splitlines()) + 1 == len(sources["modeling_mesanet.py"].splitlines())


def test_loads_without_mesanet_with_identical_outputs(saved, tmp_path):
    done = run_blocked(
        f"""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        try:
            import mesanet  # noqa: F401
            raise SystemExit("mesanet was importable")
        except ImportError:
            pass
        folder = {str(saved)!r}
        ref = torch.load({str(saved.parent / "reference.pt")!r})
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert AutoConfig.from_pretrained(folder, trust_remote_code=True).mixer_types == {KINDS!r}
        ids = ref["ids"]
        with torch.no_grad():
            assert torch.equal(model(ids, use_cache=False).logits, ref["logits"]), "logits"
            prefill = model(ids[:, :15], use_cache=True)
            cache, steps = prefill.past_key_values, [prefill.logits]
            for t in range(15, 21):
                out = model(ids[:, t: t + 1], past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                steps.append(out.logits)
            assert all(torch.equal(a, b) for a, b in zip(steps, ref["steps"])), "cached decoding"
            assert torch.equal(model.generate(ids[:, :10], max_new_tokens=8, do_sample=False), ref["generated"]), "generate"
        AutoTokenizer.from_pretrained(folder)
        again = {str(tmp_path / "again")!r}
        model.save_pretrained(again)  # a model loaded from remote code saves a folder that loads the same way
        reloaded = AutoModelForCausalLM.from_pretrained(again, trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(ids, use_cache=False).logits, ref["logits"]), "re-saved"
        print("OK")
    """,
        tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout[-2000:] + done.stderr[-4000:]
    assert (tmp_path / "again" / "modeling_mesanet.py").read_text() == (saved / "modeling_mesanet.py").read_text()


def test_stock_lm_eval_hf_model_with_trust_remote_code(saved, tmp_path):
    """``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`` (its ``simple_evaluate``; only
    the local task is indexed, the harness's ~27k built-in task files take ~20 s to scan) without mesanet: the
    accuracy on a local three-question task equals the one the package computes in this process."""
    pytest.importorskip("lm_eval", reason="lm-eval (lm-evaluation-harness) is not installed")
    from eval_helpers import build_tokenizer, write_choice_task

    write_choice_task(tmp_path, DOCS)
    done = run_blocked(
        f"""
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        import json

        results = simple_evaluate(
            model="hf", model_args="pretrained={saved},trust_remote_code=True,dtype=float32", tasks=["tiny_choice"],
            device="cpu", batch_size=2, task_manager=TaskManager(include_path={str(tmp_path / "tasks")!r}, include_defaults=False),
            log_samples=True,
        )
        scored = [[list(arg), float(resp[0][0])] for sample in results["samples"]["tiny_choice"]
                  for arg, resp in zip(sample["arguments"], sample["resps"])]
        print("RESULT" + json.dumps(dict(acc=results["results"]["tiny_choice"]["acc,none"], scored=scored)))
    """,
        tmp_path,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(done.stdout.split("RESULT")[-1])
    assert len(result["scored"]) == 6  # three questions x two choices, scored by the remote-code model

    model, tokenizer = MesaNetForCausalLM.from_pretrained(saved).eval(), build_tokenizer()
    for (context, continuation), logprob in result["scored"]:
        expected, _ = our_loglikelihood(model, tokenizer, context, continuation)
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-4), (context, continuation)
    right = 0
    for i, doc in enumerate(DOCS):
        scores = [logprob for _, logprob in result["scored"][2 * i : 2 * i + 2]]
        right += int(max(range(2), key=scores.__getitem__) == doc["label"])
    assert result["acc"] == pytest.approx(right / len(DOCS))
