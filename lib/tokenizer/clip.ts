/**
 * CLIP's byte-level BPE tokenizer (openai/CLIP `simple_tokenizer.py`, also transformers' CLIPTokenizer with ftfy):
 * clean (HTML unescape twice, collapse whitespace, strip) → lower-case → split with CLIP's regex → UTF-8 bytes mapped
 * to printable characters → BPE with merge ranks, `</w>` marking the end of each word → ids, with SOT first, EOT after
 * the last piece, and padding to model_max_length.
 *
 * Not reproduced: ftfy.fix_text (mojibake repair). Prompts that are valid Unicode are unaffected; text that is
 * already mojibake tokenizes as given.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const SOT_TOKEN = '<|startoftext|>';
export const EOT_TOKEN = '<|endoftext|>';
/** transformers reads at most this many merges (49152 − 256 − 2), like the original CLIP. */
const MAX_MERGES = 49152 - 256 - 2;

// Python's \s also matches the ASCII separators \x1c-\x1f, JS's does not.
// biome-ignore lint/suspicious/noControlCharactersInRegex: the separators are matched on purpose (CLIP's Python regex does)
const WHITESPACE = /[\s\x1c-\x1f]+/gu;
// biome-ignore lint/suspicious/noControlCharactersInRegex: as WHITESPACE
const SPLIT = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\x1c-\x1f\p{L}\p{N}]+/giu;

/** GPT-2/CLIP byte → printable character table (bytes that are printable Latin-1 keep their code point). */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table = new Array<string>(256);
  for (const b of bs) table[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCodePoint(256 + n++);
  }
  return table;
}
const BYTE_ENCODER = bytesToUnicode();
const BYTE_DECODER = new Map(BYTE_ENCODER.map((c, b) => [c, b]));

const NAMED_ENTITIES: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
  nbsp: '\u00a0',
  copy: '©',
  reg: '®',
  trade: '™',
  hellip: '…',
  mdash: '—',
  ndash: '–',
  lsquo: '‘',
  rsquo: '’',
  ldquo: '“',
  rdquo: '”',
  laquo: '«',
  raquo: '»',
  deg: '°',
  times: '×',
  divide: '÷',
  middot: '·',
  bull: '•',
  euro: '€',
  pound: '£',
  yen: '¥',
  cent: '¢',
  sect: '§',
  para: '¶',
  plusmn: '±',
  frac12: '½',
  frac14: '¼',
  frac34: '¾',
  eacute: 'é',
  egrave: 'è',
  agrave: 'à',
  aacute: 'á',
  ccedil: 'ç',
  ntilde: 'ñ',
  ouml: 'ö',
  uuml: 'ü',
  auml: 'ä',
  szlig: 'ß',
};

/** html.unescape for numeric references and the common named entities. */
function htmlUnescape(s: string): string {
  return s.replace(/&(#[0-9]+|#[xX][0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);?/g, (m, body: string) => {
    if (body[0] === '#') {
      const cp = body[1] === 'x' || body[1] === 'X' ? parseInt(body.slice(2), 16) : parseInt(body.slice(1), 10);
      // Python maps invalid/surrogate code points to U+FFFD.
      if (!Number.isFinite(cp) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp === 0) return '\ufffd';
      return String.fromCodePoint(cp);
    }
    const named = NAMED_ENTITIES[body];
    if (named !== undefined && (m.endsWith(';') || ['amp', 'lt', 'gt', 'quot', 'nbsp', 'copy', 'reg'].includes(body))) return named;
    return m;
  });
}

/** CLIP's basic_clean (without ftfy) + whitespace_clean, keeping the case. */
export function normalizeText(text: string): string {
  return htmlUnescape(htmlUnescape(text)).replace(WHITESPACE, ' ').trim();
}

/** CLIP's basic_clean (without ftfy) + whitespace_clean + lower-case: the text the split regex sees. */
export function cleanText(text: string): string {
  return normalizeText(text).toLowerCase();
}

export interface Encoding {
  /** maxLength ids: SOT, the pieces (at most maxLength − 2), EOT, then padding. */
  ids: number[];
  /** BPE pieces of the prompt (without SOT/EOT), before truncation; piece k sits at index k + 1. */
  tokens: string[];
  /** Number of real ids including SOT and EOT (≤ maxLength). */
  length: number;
  /**
   * Position of the EOT id in `ids` (SOT = 0): the first EOT, read off the ids, so it is right whatever the pad
   * token ("!" for SD 2.x/SDXL's OpenCLIP tokenizers, EOT itself for SD 1.x). The 'until-eot' token slice needs it.
   */
  eotIndex: number;
  /** True when pieces were cut to fit maxLength. */
  truncated: boolean;
}

/** One word of the prompt (one match of CLIP's split regex) and the token indices of its pieces. */
export interface WordPieces {
  /** The word as it appears in the cleaned (lower-cased) prompt. */
  word: string;
  /** Position of the word among all words (0-based). */
  wordIndex: number;
  /** Character range of the word in `cleanText(prompt)`. */
  charStart: number;
  charEnd: number;
  /** The word's BPE pieces. */
  pieces: string[];
  /** Token index of the first piece (SOT = 0, so the first word starts at 1) and one past the last. */
  start: number;
  end: number;
  /** True when some of the word's pieces fall beyond maxLength − 1 and are cut off. */
  truncated: boolean;
  /** Letters (\p{L}) only: false for numbers and punctuation. */
  isAlpha: boolean;
}

export interface ClipTokenizerOptions {
  /** Sequence length the text encoder expects; default 77. */
  maxLength?: number;
  /** Padding token string; default EOT (SD 1.x). SD 2.x uses "!" (id 0). */
  padToken?: string;
}

export class ClipTokenizer {
  readonly encoder: ReadonlyMap<string, number>;
  readonly decoder: ReadonlyMap<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();
  readonly maxLength: number;
  readonly sotId: number;
  readonly eotId: number;
  readonly padId: number;
  readonly padToken: string;

  constructor(vocab: Record<string, number>, merges: string[], options: ClipTokenizerOptions = {}) {
    if (vocab === null || typeof vocab !== 'object') throw new TypeError('ClipTokenizer: Expected an object for vocab (token → id)');
    if (!Array.isArray(merges)) throw new TypeError('ClipTokenizer: Expected an array of "a b" strings for merges');
    const enc = new Map<string, number>();
    for (const [tok, id] of Object.entries(vocab)) {
      if (!Number.isInteger(id) || id < 0)
        throw new RangeError(`ClipTokenizer: vocab["${tok}"] must be a non-negative integer id but is ${JSON.stringify(id)}`);
      enc.set(tok, id);
    }
    this.encoder = enc;
    this.decoder = new Map([...enc].map(([k, v]) => [v, k]));
    this.ranks = new Map();
    merges.slice(0, MAX_MERGES).forEach((m, i) => {
      const parts = m.split(' ');
      if (parts.length !== 2 || parts[0] === '' || parts[1] === '') {
        throw new RangeError(`ClipTokenizer: merges[${i}] must be two symbols separated by one space but is ${JSON.stringify(m)}`);
      }
      const key = `${parts[0]} ${parts[1]}`;
      if (!this.ranks.has(key)) this.ranks.set(key, i);
    });
    const need = (tok: string) => {
      const id = enc.get(tok);
      if (id === undefined) throw new RangeError(`ClipTokenizer: the vocab has no ${tok} token; is this a CLIP tokenizer?`);
      return id;
    };
    this.sotId = need(SOT_TOKEN);
    this.eotId = need(EOT_TOKEN);
    this.padToken = options.padToken ?? EOT_TOKEN;
    const pad = enc.get(this.padToken);
    if (pad === undefined) throw new RangeError(`ClipTokenizer: pad token ${JSON.stringify(this.padToken)} is not in the vocab`);
    this.padId = pad;
    const maxLength = options.maxLength ?? 77;
    if (!Number.isInteger(maxLength) || maxLength < 3)
      throw new RangeError(`ClipTokenizer: Expected an integer ≥ 3 for maxLength but received ${String(maxLength)}`);
    this.maxLength = maxLength;
    this.cache.set(SOT_TOKEN, [SOT_TOKEN]);
    this.cache.set(EOT_TOKEN, [EOT_TOKEN]);
  }

  /**
   * Loads `vocab.json` and `merges.txt` from a diffusers `tokenizer/` folder (or a model folder containing one), with
   * pad token and model_max_length from `tokenizer_config.json` / `special_tokens_map.json`.
   */
  static fromDirectory(dir: string): ClipTokenizer {
    if (typeof dir !== 'string' || dir.length === 0) throw new TypeError('ClipTokenizer.fromDirectory: Expected a directory path');
    let d = dir;
    if (!fs.existsSync(path.join(d, 'vocab.json')) && fs.existsSync(path.join(d, 'tokenizer', 'vocab.json'))) d = path.join(d, 'tokenizer');
    const read = (name: string) => {
      const f = path.join(d, name);
      try {
        return fs.readFileSync(f, 'utf8');
      } catch (err) {
        throw new Error(
          `ClipTokenizer: cannot read ${f} (${(err as NodeJS.ErrnoException).code ?? 'error'}); expected a CLIP tokenizer folder with vocab.json and merges.txt`,
        );
      }
    };
    let vocab: Record<string, number>;
    try {
      vocab = JSON.parse(read('vocab.json')) as Record<string, number>;
    } catch (err) {
      if (err instanceof SyntaxError) throw new Error(`ClipTokenizer: ${path.join(d, 'vocab.json')} is not valid JSON: ${err.message}`);
      throw err;
    }
    const lines = read('merges.txt').replace(/\r\n/g, '\n').split('\n');
    // The first line is the "#version: …" header; CLIP and transformers always skip it.
    const merges = lines.slice(1).filter((l) => l.length > 0);
    const config = readJsonIfExists(path.join(d, 'tokenizer_config.json'));
    const special = readJsonIfExists(path.join(d, 'special_tokens_map.json'));
    const tokenText = (v: unknown): string | undefined =>
      typeof v === 'string'
        ? v
        : v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string'
          ? (v as { content: string }).content
          : undefined;
    const padToken = tokenText(special?.pad_token) ?? tokenText(config?.pad_token) ?? EOT_TOKEN;
    const mml = config?.model_max_length;
    // Some configs store a huge sentinel ("no limit"); CLIP text encoders take 77.
    const maxLength = typeof mml === 'number' && Number.isInteger(mml) && mml >= 3 && mml <= 4096 ? mml : 77;
    return new ClipTokenizer(vocab, merges, { padToken, maxLength });
  }

  /** BPE of one pre-token (already byte-encoded); the last piece carries `</w>`. */
  private bpe(token: string): string[] {
    const hit = this.cache.get(token);
    if (hit) return hit;
    const chars = Array.from(token);
    let word = [...chars.slice(0, -1), `${chars[chars.length - 1]}</w>`];
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      // Merge every non-overlapping occurrence of the pair, left to right (as CLIP does).
      const merged: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i]);
          i += 1;
        }
      }
      word = merged;
    }
    if (this.cache.size < 100000) this.cache.set(token, word);
    return word;
  }

  /** Words of the cleaned prompt with their pieces (no SOT/EOT). */
  private split(text: string): { clean: string; words: Array<{ word: string; at: number; pieces: string[] }> } {
    if (typeof text !== 'string') throw new TypeError(`Expected a string for prompt but received ${text === null ? 'null' : typeof text}`);
    const clean = cleanText(text);
    const words: Array<{ word: string; at: number; pieces: string[] }> = [];
    for (const m of clean.matchAll(SPLIT)) {
      const w = m[0];
      const bytes = Buffer.from(w, 'utf8');
      let encoded = '';
      for (const b of bytes) encoded += BYTE_ENCODER[b];
      words.push({ word: w, at: m.index ?? 0, pieces: w === SOT_TOKEN || w === EOT_TOKEN ? [w] : this.bpe(encoded) });
    }
    return { clean, words };
  }

  /** Id of a piece; pieces missing from the vocab map to the unknown token (EOT in CLIP). */
  pieceId(piece: string): number {
    return this.encoder.get(piece) ?? this.eotId;
  }

  encode(text: string): Encoding {
    const { words } = this.split(text);
    const tokens = words.flatMap((w) => w.pieces);
    const room = this.maxLength - 2;
    const kept = tokens.slice(0, room);
    const ids = [this.sotId, ...kept.map((p) => this.pieceId(p)), this.eotId];
    const length = ids.length;
    while (ids.length < this.maxLength) ids.push(this.padId);
    return { ids, tokens, length, eotIndex: ids.indexOf(this.eotId), truncated: tokens.length > room };
  }

  /** Maps each word of the prompt to the token indices of its pieces (index 0 is SOT). */
  wordPieces(text: string): WordPieces[] {
    const { words } = this.split(text);
    const out: WordPieces[] = [];
    let index = 1;
    const last = this.maxLength - 2; // highest index a piece can have (EOT follows it)
    words.forEach((w, wordIndex) => {
      const start = index;
      index += w.pieces.length;
      out.push({
        word: w.word,
        wordIndex,
        charStart: w.at,
        charEnd: w.at + w.word.length,
        pieces: w.pieces,
        start: Math.min(start, last + 1),
        end: Math.min(index, last + 1),
        truncated: index - 1 > last,
        isAlpha: /^\p{L}+$/u.test(w.word),
      });
    });
    return out;
  }

  /** A piece as readable text: bytes decoded, `</w>` turned into a trailing space. */
  decodePiece(piece: string | number): string {
    const p = typeof piece === 'number' ? this.decoder.get(piece) : piece;
    if (p === undefined) throw new RangeError(`decodePiece: id ${String(piece)} is not in the vocab`);
    if (p === SOT_TOKEN || p === EOT_TOKEN) return p;
    const endOfWord = p.endsWith('</w>');
    const body = endOfWord ? p.slice(0, -4) : p;
    const bytes: number[] = [];
    for (const ch of body) {
      const b = BYTE_DECODER.get(ch);
      if (b === undefined) return p; // not a byte-encoded piece (e.g. an added token)
      bytes.push(b);
    }
    return Buffer.from(bytes).toString('utf8') + (endOfWord ? ' ' : '');
  }

  /** Decodes ids back to text (stops at the first EOT; SOT is dropped). */
  decode(ids: number[]): string {
    const parts: string[] = [];
    for (const id of ids) {
      if (id === this.sotId) continue;
      if (id === this.eotId) break;
      const p = this.decoder.get(id);
      if (p === undefined) throw new RangeError(`decode: id ${id} is not in the vocab`);
      parts.push(p.endsWith('</w>') ? `${p.slice(0, -4)} ` : p);
    }
    const bytes: number[] = [];
    for (const ch of parts.join('')) bytes.push(ch === ' ' ? 0x20 : (BYTE_DECODER.get(ch) ?? 0x3f));
    return Buffer.from(bytes).toString('utf8').trim();
  }
}

function readJsonIfExists(file: string): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) return undefined;
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : undefined;
  } catch (err) {
    throw new Error(`ClipTokenizer: ${file} is not valid JSON: ${(err as Error).message}`);
  }
}
