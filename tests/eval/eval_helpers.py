"""Builders shared by the evaluation tests: a small byte-level BPE tokenizer, tiny models, token streams,
and a stand-in for ``mesanet.data.eval_windows``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import mesanet  # noqa: F401  (registers the Auto classes)
from mesanet.models import MesaNetForCausalLM, preset_config

EOD, PAD = "<|endoftext|>", "<|pad|>"
TEXT = (
    "The Mesa layer solves a ridge regression problem at every token. It keeps two states and answers each query "
    "with a conjugate-gradient solve. Language models read text one token at a time and predict the next one.\n"
) * 4


def build_tokenizer(vocab_size: int = 300):
    """Byte-level BPE (like the data pipeline's) trained on a few sentences: ids 0 and 1 are EOD and PAD."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOD, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD, bos_token=EOD, pad_token=PAD)


def build_model(mixer="mesa", seed: int = 0, **overrides) -> MesaNetForCausalLM:
    """Tiny preset (vocab 512 >= the test tokenizer's), random weights, eval mode."""
    torch.manual_seed(seed)
    fields = dict(chunk_size=16, eos_token_id=0, pad_token_id=1, bos_token_id=0)
    return MesaNetForCausalLM(preset_config("tiny", mixer=mixer, **{**fields, **overrides})).eval()


def random_tokens(length: int, vocab: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, vocab, size=length).astype(np.int64)


def fake_eval_windows(tokens, seq_len, max_windows=None) -> torch.Tensor:
    n = len(tokens) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    return torch.as_tensor(np.asarray(tokens[: n * seq_len])).long().view(n, seq_len)


TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    higher_is_better: true
"""


def write_choice_task(folder: Path, docs: list[dict]) -> Path:
    """A local multiple-choice lm-eval task ``tiny_choice`` over ``docs`` (``folder/data.jsonl``,
    ``folder/tasks/tiny_choice.yaml``); returns the tasks folder for ``TaskManager(include_path=...)``."""
    (folder / "data.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tasks").mkdir()
    (folder / "tasks" / "tiny_choice.yaml").write_text(TASK.format(data=folder / "data.jsonl"))
    return folder / "tasks"
