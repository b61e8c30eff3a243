"""Output rows that give a new piece the probability the base model gave to spelling it.

Why: most new Chinese pieces are characters the base tokenizer spells with 2-3 byte-fallback
pieces (12,573 of 17,472 for LLaMA + chinese_sp). The mean of those pieces' OUTPUT rows scores
a lead byte and two continuation bytes against the same hidden state, where only the lead byte is
a plausible next token, so it cannot tell one character from the next. What the base model knows
about a piece a1 a2 .. ak is

    log p(piece | context) = log p(a1 | context) + sum_j log p(a_j | context, a1 .. a_j-1)

and the first term is the base logit of a1: a new output row w = w[a1] + c * u, with c the
log-probability of the rest of the spelling and u a direction with h . u ~= 1 for the base
model's final hidden states h, reproduces it (LLaMA heads have no bias, so u stands in for one).

Both come from calibration text (samples of the user's corpora): c is averaged over a few short
contexts cut from the first file (one batched forward pass per context over all new pieces), and u
is the ridge least-squares fit over the hidden states of the base model reading all files. Fitting
u on the short spelling passes instead generalises badly to running text (measured on the
benchmark's base model: English bits/char 2.37 → 3.68 at step 0, against 2.52 fitted on text).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zhllama.errors import UserError

CONTEXTS = 4  # short contexts from the calibration text that each spelling is scored after
CONTEXT_TOKENS = 8
FIT_WINDOWS = 64  # calibration windows whose hidden states fit u
FIT_WINDOW_TOKENS = 128


@dataclass
class Spelling:
    logprob_rest: dict[int, float]  # new id -> mean over contexts of log p(a2 .. ak | ctx, a1), nats
    direction: object  # torch.Tensor [hidden], float32: h . u ~= 1
    fit_mean: float  # mean and spread of h . u over the calibration states: how well u acts as a bias
    fit_std: float
    states: int
    contexts: int


def calibration_ids(paths: list[Path], encode, bos_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(contexts, fit windows) from UTF-8 text files, one paragraph per line.

    Windows (BOS + up to FIT_WINDOW_TOKENS tokens of a line) are shared evenly between the files,
    because u must act as a bias on every kind of text the model reads: fitted on Chinese alone it
    misses on English states and new Chinese pieces take English positions (measured: English
    bits/char 2.37 → 5.61). Contexts are the first lines of the first file (the new language).
    """
    per_file = max(1, FIT_WINDOWS // len(paths))
    windows: list[list[int]] = []
    contexts: list[list[int]] = []
    for k, path in enumerate(paths):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--calibration-text {path}: cannot read it as UTF-8 text ({exc})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        own = [[bos_id] + encode(line)[:FIT_WINDOW_TOKENS] for line in lines[:per_file]]
        if sum(len(w) for w in own) < 500:
            raise UserError(f"--calibration-text {path}: needs at least 500 tokens of text "
                            f"(found {sum(len(w) for w in own)} in {len(own)} lines)")
        windows.extend(own)
        if k == 0:
            contexts = [w[:1 + CONTEXT_TOKENS] for w in own if len(w) > CONTEXT_TOKENS][:CONTEXTS]
    if not contexts:
        raise UserError(f"--calibration-text {paths[0]}: needs lines of at least {CONTEXT_TOKENS} tokens")
    return contexts, windows


def _padded(seqs: list[list[int]], pad: int):
    import torch

    width = max(map(len, seqs))
    inputs = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        inputs[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return inputs, mask


def spelling_logprobs(model, sources: dict[int, list[int]], contexts: list[list[int]], windows: list[list[int]],
                      batch_size: int = 64, progress=None) -> Spelling:
    """Score every spelling after every context; fit u on the calibration windows."""
    import torch

    head = model.get_output_embeddings()
    captured = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    device = head.weight.device
    ids = sorted(sources, key=lambda i: (len(sources[i]), i))
    jobs = [(ctx, ids[s:s + batch_size]) for ctx in contexts for s in range(0, len(ids), batch_size)]
    if progress is not None:
        jobs = progress(jobs, desc="scoring new pieces' spellings with the base model", unit="batch")
    totals = dict.fromkeys(ids, 0.0)
    try:
        with torch.no_grad():
            for ctx, batch in jobs:
                inputs, mask = _padded([ctx + sources[i] for i in batch], ctx[0])
                inputs, mask = inputs.to(device), mask.to(device)
                # Position p predicts token p+1; the spelling's rest starts at len(ctx) + 1. Only those
                # positions need a log-softmax over the vocabulary (not the context's).
                start = len(ctx) + 1
                logits = model(input_ids=inputs, attention_mask=mask).logits[:, start - 1:-1]
                logp = torch.log_softmax(logits.float(), dim=-1)
                picked = logp.gather(-1, inputs[:, start:].unsqueeze(-1)).squeeze(-1)
                picked = (picked * mask[:, start:]).sum(dim=1).tolist()
                for i, value in zip(batch, picked):
                    totals[i] += value
            captured.clear()
            states = []
            for s in range(0, len(windows), 8):
                inputs, mask = _padded(windows[s:s + 8], windows[0][0])
                mask = mask.to(device)
                model(input_ids=inputs.to(device), attention_mask=mask)
                states.append(captured.pop()[mask.bool()].double().cpu())
    finally:
        hook.remove()
    hidden = torch.cat(states)
    direction = constant_direction(hidden)
    fit = hidden @ direction
    return Spelling({i: v / len(contexts) for i, v in totals.items()}, direction.float(),
                    float(fit.mean()), float(fit.std()), hidden.shape[0], len(contexts))


def constant_direction(hidden, ridge: float = 1e-3):
    """u minimising |H u - 1|^2 + ridge * mean(diag(H^T H)) * |u|^2 (float64)."""
    import torch

    gram = hidden.T @ hidden
    scale = ridge * float(torch.diagonal(gram).mean())
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + scale * eye, hidden.T @ torch.ones(hidden.shape[0], dtype=gram.dtype))


def spell_with_base_model(model_dir, sources: dict[int, list[int]], contexts, windows, device: str,
                          trust_remote_code: bool, progress=None) -> Spelling:
    """Load the base model (stored dtype) on ``device``, score the spellings, free the model."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", trust_remote_code=trust_remote_code)
    model.to(device).eval()
    try:
        return spelling_logprobs(model, sources, contexts, windows, progress=progress)
    finally:
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def apply_spelling(grown, old, sources: dict[int, list[int]], spelling: Spelling):
    """Overwrite the spelled rows of the grown output matrix with w[a1] + c * u (float32 math)."""
    for i, ids in sources.items():
        grown[i] = (old[ids[0]].float() + spelling.logprob_rest[i] * spelling.direction).to(grown.dtype)
    return grown


def spelling_summary(spelling: Spelling, device: str, calibration: list[Path]) -> dict:
    values = list(spelling.logprob_rest.values())
    return {
        "output_rows": len(values),
        "calibration_text": [str(p) for p in calibration],
        "contexts": spelling.contexts,
        "device": device,
        "mean_logprob_rest_nats": sum(values) / max(len(values), 1),
        "bias_direction_fit": {"states": spelling.states, "mean": spelling.fit_mean, "std": spelling.fit_std},
    }
