"""CLIP byte-level BPE: learn a small vocabulary (vocab.json + merges.txt in CLIP's format) and tokenize with it.

The tokenizer follows OpenAI CLIP's `simple_tokenizer` algorithm (written here from its description, not copied):
  1. clean: HTML-unescape twice, collapse whitespace, strip, lowercase (ftfy's fix_text is not applied; it is
     the identity on ASCII text);
  2. pre-tokenize with CLIP's pattern
     <|startoftext|> | <|endoftext|> | 's|'t|'re|'ve|'m|'ll|'d | \\p{L}+ | \\p{N} | [^\\s\\p{L}\\p{N}]+
     (the third-party `regex` module is not available, so the pattern is evaluated by a hand-written scanner
     with the same alternation order; \\p{L} = str.isalpha(), \\p{N} = Unicode category N*);
  3. map each piece's UTF-8 bytes through bytes_to_unicode, append `</w>` to the last symbol, and apply merges
     by lowest rank until none applies;
  4. ids = [SOT] + pieces + [EOT], truncated to 77 (keeping EOT last), padded with the pad token: EOT in SD 1.x
     (and SDXL's first tokenizer), "!" (id 0) in SD 2.x and SDXL's tokenizer_2.

Vocabulary layout (CLIP's): the 256 byte symbols in bytes_to_unicode order, the same 256 with `</w>`, one entry
per merge (the concatenated pair) in merge order, then `<|startoftext|>`, `<|endoftext|>` last.
"""
from __future__ import annotations

import html
import json
import os
import re
import unicodedata
from collections import Counter
from typing import Dict, Iterable, List, Sequence, Tuple

SOT = '<|startoftext|>'
EOT = '<|endoftext|>'
OPENCLIP_PAD = '!'  # SD 2.x / SDXL tokenizer_2 pad token: the first byte symbol, id 0
MAX_LENGTH = 77
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP byte → printable unicode map: printable latin-1 bytes map to themselves, the other 68 bytes to
    code points 256, 257, … in byte order."""
    keep = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    bs = keep[:]
    cs = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENCODER = bytes_to_unicode()


def clean_text(text: str) -> str:
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r'\s+', ' ', text).strip().lower()


def _is_letter(ch: str) -> bool:
    return ch.isalpha()


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch).startswith('N')


def pre_tokenize(text: str) -> List[str]:
    """CLIP's regex, alternation order preserved; `text` must already be cleaned (lowercase)."""
    out: List[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith(SOT, i):
            out.append(SOT)
            i += len(SOT)
            continue
        if text.startswith(EOT, i):
            out.append(EOT)
            i += len(EOT)
            continue
        matched = False
        if ch == "'":
            for c in CONTRACTIONS:  # alternation order: the first contraction that matches wins
                if text.startswith(c, i):
                    out.append(c)
                    i += len(c)
                    matched = True
                    break
        if matched:
            continue
        if _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
            out.append(text[i:j])
            i = j
        elif _is_number(ch):
            out.append(ch)
            i += 1
        elif ch.isspace():
            i += 1
        else:
            j = i + 1
            while j < n and not (text[j].isspace() or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
            out.append(text[i:j])
            i = j
    return out


def word_symbols(piece: str) -> Tuple[str, ...]:
    s = ''.join(BYTE_ENCODER[b] for b in piece.encode('utf-8'))
    return tuple(s[:-1]) + (s[-1] + '</w>',)


# ---------------------------------------------------------------------------------------------------------
# Learning


def learn_merges(words: Iterable[str], max_merges: int = 4000) -> List[Tuple[str, str]]:
    """Classic BPE on word frequencies: repeatedly merge the most frequent adjacent pair (ties: the pair that
    sorts first), until every word is one symbol or max_merges is reached. Every corpus word therefore ends up
    a single token, and words outside the corpus split into pieces."""
    freq = Counter()
    for w in words:
        for p in pre_tokenize(clean_text(w)):
            if p not in (SOT, EOT):
                freq[word_symbols(p)] += 1
    vocab = dict(freq)
    merges: List[Tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs = Counter()
        for sym, f in vocab.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_vocab = {}
        for sym, f in vocab.items():
            out = []
            i = 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == best[0] and sym[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new_vocab[tuple(out)] = new_vocab.get(tuple(out), 0) + f
        vocab = new_vocab
    return merges


def build_vocab(merges: Sequence[Tuple[str, str]]) -> Dict[str, int]:
    base = list(BYTE_ENCODER.values())
    entries = base + [b + '</w>' for b in base] + [a + b for a, b in merges] + [SOT, EOT]
    vocab: Dict[str, int] = {}
    for e in entries:
        if e in vocab:
            raise ValueError(f'duplicate vocabulary entry {e!r}')
        vocab[e] = len(vocab)
    return vocab


def write_tokenizer_files(folder: str, merges: Sequence[Tuple[str, str]], pad_token: str = EOT) -> Dict[str, int]:
    os.makedirs(folder, exist_ok=True)
    vocab = build_vocab(merges)
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
        f.write('#version: 0.2 - divbind-native tiny CLIP BPE (tools/clip_bpe.py)\n')
        for a, b in merges:
            f.write(f'{a} {b}\n')
    if pad_token not in vocab:
        raise ValueError(f'pad token {pad_token!r} is not in the vocabulary')
    special = {'bos_token': SOT, 'eos_token': EOT, 'unk_token': EOT, 'pad_token': pad_token}
    with open(os.path.join(folder, 'special_tokens_map.json'), 'w') as f:
        json.dump(special, f, indent=2)
    config = {
        'tokenizer_class': 'CLIPTokenizer', 'model_max_length': MAX_LENGTH, 'do_lower_case': True,
        'bos_token': SOT, 'eos_token': EOT, 'unk_token': EOT, 'pad_token': pad_token,
        'errors': 'replace', 'add_prefix_space': False,
    }
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    return vocab


# ---------------------------------------------------------------------------------------------------------
# Tokenizing


class ClipTokenizer:
    def __init__(self, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]], pad_token: str = EOT):
        self.vocab = vocab
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.sot = vocab[SOT]
        self.eot = vocab[EOT]
        self.pad_token = pad_token
        self.pad = vocab[pad_token]

    @classmethod
    def from_folder(cls, folder: str) -> 'ClipTokenizer':
        with open(os.path.join(folder, 'vocab.json'), encoding='utf-8') as f:
            vocab = json.load(f)
        with open(os.path.join(folder, 'merges.txt'), encoding='utf-8') as f:
            lines = f.read().split('\n')
        merges = [tuple(l.split(' ')) for l in lines[1:] if l.strip()]
        with open(os.path.join(folder, 'special_tokens_map.json'), encoding='utf-8') as f:
            pad = json.load(f).get('pad_token', EOT)
        return cls(vocab, merges, pad if isinstance(pad, str) else pad['content'])

    def bpe(self, piece: str) -> List[str]:
        sym = list(word_symbols(piece))
        while len(sym) > 1:
            best, best_rank = None, None
            for i in range(len(sym) - 1):
                r = self.ranks.get((sym[i], sym[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            a, b = sym[best], sym[best + 1]
            out, i = [], 0
            while i < len(sym):  # merge every occurrence of the chosen pair, left to right
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        return sym

    def tokens(self, text: str) -> List[str]:
        out: List[str] = []
        for p in pre_tokenize(clean_text(text)):
            if p in (SOT, EOT):
                out.append(p)
            else:
                out.extend(self.bpe(p))
        return out

    def encode(self, text: str) -> List[int]:
        """Token ids without SOT/EOT."""
        return [self.vocab[t] for t in self.tokens(text)]

    def __call__(self, text: str, max_length: int = MAX_LENGTH) -> List[int]:
        """SOT + ids + EOT, truncated to max_length with EOT kept last, padded with the pad token."""
        ids = [self.sot] + self.encode(text)[:max_length - 2] + [self.eot]
        return ids + [self.pad] * (max_length - len(ids))

    def eot_index(self, text: str, max_length: int = MAX_LENGTH) -> int:
        """Position of the EOT token in self(text) (= 1 + number of kept pieces)."""
        return 1 + min(len(self.encode(text)), max_length - 2)
