"""A word-level CLIP tokenizer for the synthetic world (bld.world), written as standard CLIP files.

The files are the ones every CLIP tokenizer uses (vocab.json, merges.txt, tokenizer_config.json,
special_tokens_map.json), so transformers' CLIPTokenizer.from_pretrained and diffusers' pipelines load
them unchanged. The vocabulary holds:

- the 256 byte-level symbols, bare and with the end-of-word marker "</w>" (so any text tokenizes,
  unknown words falling apart into characters);
- every word of `bld.world.scenes.vocabulary()` as one token "word</w>", plus the prefixes the merges build
  it through (a merge adds one character at a time, left to right);
- <|startoftext|> and <|endoftext|> (also the padding token, as in Stable Diffusion 1.x).

`check_word_level` verifies that each vocabulary word comes out as a single token.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...testing.tiny_models import byte_symbols
from ..scenes import vocabulary

# The longest caption of the grammar: 3 objects (9 words), 2 "and", "on", "a C and C checkerboard" (5)
# = 17 words, plus the start and end tokens = 19. 32 leaves room and keeps the text encoder small.
MODEL_MAX_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _word_chains(words: list[str]) -> list[tuple[str, str]]:
    """Merges that build each word left to right: (prefix, next char), the last char with </w>."""
    merges: list[tuple[str, str]] = []
    seen = set()
    for w in words:
        if len(w) < 2:
            continue
        prefix = w[0]
        for i, ch in enumerate(w[1:], start=1):
            right = ch + "</w>" if i == len(w) - 1 else ch
            pair = (prefix, right)
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            prefix = prefix + right
    return merges


def _simulate_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one pre-tokenized word (lowest-ranked pair first)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _ordered_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merge order under which every word ends as one token: words whose chains get cut by another
    word's merge move to the front until none is (a few rounds suffice for the world's words)."""
    order = sorted(words, key=lambda w: (-len(w), w))  # long words first: their inner pairs win
    for _ in range(100):
        merges = _word_chains(order)
        ranks = {m: i for i, m in enumerate(merges)}
        bad = [w for w in order if len(_simulate_bpe(w, ranks)) != 1]
        if not bad:
            return merges
        order = bad + [w for w in order if w not in bad]
    raise RuntimeError(f"no merge order keeps these words whole: {bad}")


def vocab_and_merges(words: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    words = sorted(set(words or vocabulary()))
    merges = _ordered_merges(words)
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    known = set(tokens)
    for a, b in merges:  # every merge result (word prefixes and whole words) is a token
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
    for w in words:  # one-letter words ("a") are byte tokens already
        assert w + "</w>" in known, w
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_vocab_files(folder: str | Path) -> None:
    """vocab.json and merges.txt (the classic CLIP tokenizer files) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")


def write_world_tokenizer(folder: str | Path, *, model_max_length: int = MODEL_MAX_LENGTH):
    """Write the tokenizer files to `folder` and return `CLIPTokenizer.from_pretrained(folder)`."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    write_vocab_files(folder)
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length,
                        bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tok.save_pretrained(folder)
    loaded = CLIPTokenizer.from_pretrained(folder)
    check_word_level(loaded)
    return loaded


def clear_call_state(tokenizer):
    """Reset the padding and truncation that a fast tokenizer keeps from its last call, and return it.

    save_pretrained writes them into tokenizer.json, where they would become every loader's default."""
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    return tokenizer


def special_ids(tokenizer) -> dict[str, int]:
    """bos/eos/pad ids and vocab size, for the CLIP text config."""
    return {"bos_token_id": tokenizer.convert_tokens_to_ids(BOS), "eos_token_id": tokenizer.convert_tokens_to_ids(EOS),
            "pad_token_id": tokenizer.convert_tokens_to_ids(EOS), "vocab_size": len(tokenizer)}


def check_word_level(tokenizer, words: list[str] | None = None) -> None:
    """ValueError unless each word encodes to exactly one token, itself."""
    for w in words or vocabulary():
        ids = tokenizer(w, add_special_tokens=False).input_ids
        if len(ids) != 1 or tokenizer.convert_ids_to_tokens(ids)[0] != w + "</w>":
            raise ValueError(f"word {w!r} tokenizes to {tokenizer.convert_ids_to_tokens(ids)}, not one token")
