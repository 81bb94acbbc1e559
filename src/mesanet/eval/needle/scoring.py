"""Scoring: greedy answer and teacher-forced answer tokens per prompt, trial records, means per cell, and
``needle_in_a_haystack`` (config -> prompts -> scores -> ``NeedleResult``)."""

from __future__ import annotations

import copy
import re
import time
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluate import model_device
from .config import NeedleConfig
from .prompts import NeedlePrompt, _Pieces, corpus_documents, make_prompts
from .results import NeedleCell, NeedleResult, NeedleTrial


@torch.no_grad()
def score_prompts(model: nn.Module, prompts: Sequence[NeedlePrompt], pad_id: int = 0) -> list[dict]:
    """Greedy answer and teacher-forced answer log-probabilities of same-length prompts, in one batch.

    Uses the model's recurrent cache when its forward returns one (``past_key_values``), else recomputes
    the whole sequence. Returns per prompt ``answer`` (greedy token ids, ``len(target) + 2`` of them),
    ``logprobs`` and ``correct`` (per target token)."""
    if len({len(p.ids) for p in prompts}) != 1:
        raise ValueError(f"score_prompts: expected prompts of one length, got {sorted({len(p.ids) for p in prompts})}")
    device = model_device(model)
    ids = torch.as_tensor(np.stack([p.ids for p in prompts]), device=device)
    width = max(len(p.target) for p in prompts)
    targets = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        targets[i, : len(p.target)] = torch.as_tensor(p.target, device=device)

    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float()
    cache = getattr(out, "past_key_values", None)
    logits = [first]
    if width > 1:  # teacher forcing through the answer
        if cache is not None:
            rest = model(input_ids=targets[:, :-1], past_key_values=copy.deepcopy(cache), use_cache=True).logits
        else:
            rest = model(input_ids=torch.cat([ids, targets[:, :-1]], 1), use_cache=False, logits_to_keep=width - 1).logits
        logits += list(rest.float().unbind(1))
    logp = torch.stack(logits, 1).log_softmax(-1)  # [B, width, V]
    token_logp = logp.gather(-1, targets[..., None])[..., 0]
    correct = logp.argmax(-1) == targets

    generated, seq, step = [], ids, first.argmax(-1)
    for i in range(width + 2):  # greedy decoding
        generated.append(step)
        if i == width + 1:
            break
        if cache is not None:
            out = model(input_ids=step[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
        else:
            seq = torch.cat([seq, step[:, None]], 1)
            out = model(input_ids=seq, use_cache=False, logits_to_keep=1)
        step = out.logits[:, -1].argmax(-1)
    answers = torch.stack(generated, 1).cpu()
    return [
        dict(
            answer=answers[i].tolist(),
            logprobs=token_logp[i, : len(p.target)].double().cpu().numpy(),
            correct=correct[i, : len(p.target)].cpu().numpy(),
        )
        for i, p in enumerate(prompts)
    ]


def _trial_record(prompt: NeedlePrompt, scored: dict, pieces: _Pieces, kind: str, factor: float, trial: int) -> NeedleTrial:
    text = pieces.tokenizer.decode(scored["answer"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    answer = re.match(r'[^"\n]*"?', text).group(0)
    value_lp = float(scored["logprobs"][: prompt.value_tokens].sum())
    return NeedleTrial(
        haystack=kind,
        factor=factor,
        length=len(prompt.ids),
        depth=prompt.depth,
        trial=trial,
        value=prompt.value,
        answer=answer,
        exact=text.startswith(prompt.value + '"'),
        token_acc=float(scored["correct"].mean()),
        value_logprob=value_lp,
        logprob_per_digit=value_lp / len(prompt.value),
        actual_depth=prompt.actual_depth,
        needle_start=prompt.needle_start,
    )


def _aggregate(trials: list[NeedleTrial], config: NeedleConfig) -> list[NeedleCell]:
    cells = []
    for kind in config.haystacks:
        for factor, length in config.lengths():
            for depth in config.depths:
                group = [t for t in trials if t.haystack == kind and t.length == length and t.depth == depth]
                mean = lambda name: float(np.mean([getattr(t, name) for t in group]))  # noqa: E731
                cells.append(
                    NeedleCell(
                        haystack=kind,
                        factor=factor,
                        length=length,
                        depth=depth,
                        trials=len(group),
                        exact_match=mean("exact"),
                        token_acc=mean("token_acc"),
                        value_logprob=mean("value_logprob"),
                        logprob_per_digit=mean("logprob_per_digit"),
                        actual_depth=mean("actual_depth"),
                    )
                )
    return cells


def needle_in_a_haystack(
    model: nn.Module,
    tokenizer,
    config: Optional[NeedleConfig] = None,
    *,
    documents: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> NeedleResult:
    """Run the needle test of ``config`` on ``model`` (any causal LM whose forward returns ``.logits``).

    ``documents``: the text haystack's source texts (default: :func:`corpus_documents`, the held-out
    validation documents of the default standard-library corpus). Lengths too short to hold BOS, needle and
    query raise ``ValueError`` before anything runs."""
    config = config or NeedleConfig()
    if not isinstance(config, NeedleConfig):
        raise ValueError(f"needle_in_a_haystack: expected a NeedleConfig, got {type(config).__name__}")
    started = time.perf_counter()
    pieces = _Pieces(tokenizer, config.key)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"needle_in_a_haystack: the tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
    need = pieces.overhead(config.max_digits) + 1
    short = [(f, n) for f, n in config.lengths() if n < need]
    if short:
        raise ValueError(
            f"needle_in_a_haystack: lengths {[n for _, n in short]} (factors {[f for f, _ in short]} x train_len "
            f"{config.train_len}) are shorter than BOS + needle + query + 1 haystack token = {need} tokens"
        )
    text_source = None
    if "text" in config.haystacks and documents is None:
        documents, text_source = corpus_documents()
    elif "text" in config.haystacks:
        documents = [d for d in documents if d.strip()]
        if not documents:
            raise ValueError("needle_in_a_haystack: expected at least one non-empty document for the text haystack")
        text_source = text_source or f"{len(documents)} given documents"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    total = len(config.haystacks) * len(config.lengths()) * config.trials * len(config.depths)
    bar = tqdm(total=total, desc="needle", unit="prompt", disable=not progress)
    trials: list[NeedleTrial] = []
    was_training = model.training
    model.eval()
    try:
        for kind in config.haystacks:
            for factor, length in config.lengths():
                bar.set_postfix_str(f"{kind} {length} tokens")
                batch = []
                for trial in range(config.trials):
                    batch += [(trial, p) for p in make_prompts(tokenizer, config, kind, length, trial, documents, pieces)]
                for start in range(0, len(batch), config.batch_size):
                    chunk = batch[start : start + config.batch_size]
                    for (trial, prompt), scored in zip(chunk, score_prompts(model, [p for _, p in chunk], pad)):
                        trials.append(_trial_record(prompt, scored, pieces, kind, factor, trial))
                    bar.update(len(chunk))
    finally:
        model.train(was_training)
        bar.close()
    return NeedleResult(
        config=config,
        cells=_aggregate(trials, config),
        trials=trials,
        text_source=text_source,
        seconds=time.perf_counter() - started,
    )
