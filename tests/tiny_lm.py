"""A tiny, randomly initialised Qwen3-shaped causal LM plus an offline tokenizer, for tests.

``make_tiny_lm(path)`` writes a model and tokenizer with ``save_pretrained`` and returns the
path, so ``BackendConfig(kind="lm", model=path)`` loads it like a hub checkpoint — nothing is
downloaded. The tokenizer is word-level: a word keeps its leading space (" A", " True" are
single tokens), unknown words map to ``[UNK]``, and there is no pad token (the backend must
fall back to eos). ``keyword_split`` makes a small pairwise task the tiny model can learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from w2slab.testbeds.format import Split

# Words the tokenizer knows, each with and without a leading space.
WORDS = (  # noqa: SIM905 - a word list reads better as text
    "Question Answer Label A B True False yes no good bad alpha beta gamma delta "
    "the a an is was of to and or in on it this that which what why how cat dog bird fish "
    "red blue green big small fast slow one two three four five six seven eight nine ten "
    "sky sea tree rock sun moon star river hill road book song"
).split()
PUNCT = [":", ".", ",", "?", "!", "'", "-"]
SPECIALS = ["[UNK]", "<|endoftext|>"]
# Pre-tokenizer: an optional space glued to a word or punctuation run; other whitespace alone.
PATTERN = r" ?[A-Za-z0-9]+| ?[^A-Za-z0-9\s]+|\s+"


def tiny_vocab(drop: tuple[str, ...] = ()) -> dict[str, int]:
    tokens = list(SPECIALS)
    for w in WORDS + PUNCT:
        tokens += [w, " " + w]
    tokens += ["\n", " ", "  "]
    tokens = [t for t in dict.fromkeys(tokens) if t not in drop]
    return {t: i for i, t in enumerate(tokens)}


def make_tokenizer(drop: tuple[str, ...] = ()):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=tiny_vocab(drop), unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|endoftext|>")


def make_tiny_lm(
    path: str | Path,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    drop_tokens: tuple[str, ...] = (),
) -> str:
    """Save a tiny random Qwen3 model + tokenizer under ``path``; returns ``str(path)``.

    ``drop_tokens`` removes vocabulary entries (e.g. ``(" True",)`` to make a label token
    unknown to the tokenizer).
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(drop_tokens)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


FILLER = "the a is cat dog bird fish red blue green big small sky sea tree rock sun moon".split()  # noqa: SIM905


def keyword_split(n: int = 64, seed: int = 0) -> Split:
    """Pairwise rows whose label is set by a keyword in the prompt: alpha -> A, beta -> B."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        lab = i % 2
        words = list(rng.choice(FILLER, rng.integers(2, 14)))
        words.insert(int(rng.integers(0, len(words) + 1)), ("alpha", "beta")[lab])
        rows.append(
            {
                "prompt": " ".join(words),
                "first": " ".join(rng.choice(FILLER, rng.integers(1, 5))),
                "second": " ".join(rng.choice(FILLER, rng.integers(1, 5))),
            }
        )
        labels.append(lab)
    return Split("pairwise", rows, np.array(labels))
