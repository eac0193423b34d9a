/**
 * Which prompt tokens the guidance optimises: object tokens (tokenIndices) and, aligned with them, attribute tokens
 * (attributeIndices, for `tv_bind`). Three ways in, all returning the same TokenSelection so a caller can always show
 * which tokens were chosen:
 *  - explicit indices (as in the official code: index counts from SOT = 0);
 *  - words ("dog", "dog#2" for the second "dog", "teddy bear" for a phrase);
 *  - automatic: a part-of-speech parse (compromise) finds the subject nouns and the adjectives bound to them.
 */
import nlp from 'compromise';
import { type ClipTokenizer, type WordPieces, normalizeText, cleanText } from '../tokenizer/clip';

export type TokenRole = 'object' | 'attribute';
/**
 * Which piece stands for a word that BPE splits into several pieces.
 * 'last' (default): the piece that ends the word (carries `</w>`). CLIP's text encoder is causal, so only the last
 * piece's embedding has seen the whole word; it is also the position a one-piece word would occupy.
 * 'first': the first piece. (Attend-and-Excite's authors suggest the piece with the most attention; the pipeline
 * could pick that after a forward pass.)
 */
export type PieceRule = 'last' | 'first';

export interface TokenTableRow {
  /** Token index (SOT = 0). */
  index: number;
  kind: 'sot' | 'token' | 'eot' | 'pad';
  /** The BPE piece (e.g. "dog</w>"), or the special token. */
  piece: string;
  /** The word this piece belongs to (cleaned, lower-case); null for SOT/EOT/padding. */
  word: string | null;
  wordIndex: number | null;
}

export interface TokenChoice {
  role: TokenRole;
  /** Position in tokenIndices of the object this token is (or describes). */
  slot: number;
  word: string;
  wordIndex: number;
  piece: string;
  index: number;
  source: 'index' | 'word' | 'auto';
}

export interface TokenSelection {
  prompt: string;
  tokenIndices: number[];
  /** Aligned with tokenIndices; null entries mean "no attribute". null when no object has one. */
  attributeIndices: Array<number | null> | null;
  choices: TokenChoice[];
  table: TokenTableRow[];
}

export interface SelectionSpec {
  /** Token indices (numbers, or digit strings) or words (`dog`, `dog#2`, `teddy bear`). Omit for automatic. */
  objects?: Array<number | string>;
  /** Aligned with objects; null, '', '-', 'none' or an index ≤ 0 mean no attribute. */
  attributes?: Array<number | string | null>;
  /** Piece of a multi-piece word; default 'last'. */
  piece?: PieceRule;
}

// ------------------------------------------------------------------------------------------------- table

/** The index table users pick from: SOT, every piece with its word, EOT (and, on request, the padding). */
export function tokenTable(tokenizer: ClipTokenizer, prompt: string, options: { padding?: boolean } = {}): TokenTableRow[] {
  const enc = tokenizer.encode(prompt);
  const words = tokenizer.wordPieces(prompt);
  const rows: TokenTableRow[] = [{ index: 0, kind: 'sot', piece: '<|startoftext|>', word: null, wordIndex: null }];
  for (const w of words) {
    w.pieces.forEach((p, k) => {
      const index = w.start + k;
      if (index <= enc.length - 2) rows.push({ index, kind: 'token', piece: p, word: w.word, wordIndex: w.wordIndex });
    });
  }
  rows.push({ index: enc.length - 1, kind: 'eot', piece: '<|endoftext|>', word: null, wordIndex: null });
  if (options.padding) {
    const padPiece = tokenizer.decoder.get(tokenizer.padId) ?? String(tokenizer.padId);
    for (let i = enc.length; i < tokenizer.maxLength; i++) rows.push({ index: i, kind: 'pad', piece: padPiece, word: null, wordIndex: null });
  }
  return rows;
}

/** Plain-text rendering of the table (index, piece, word). */
export function formatTokenTable(rows: TokenTableRow[]): string {
  const lines = rows.map((r) => [String(r.index), r.piece, r.word ?? (r.kind === 'token' ? '' : `(${r.kind})`)]);
  const header = ['index', 'token', 'word'];
  const widths = header.map((h, c) => Math.max(h.length, ...lines.map((l) => l[c].length)));
  const fmt = (l: string[]) =>
    l
      .map((v, c) => (c === 0 ? v.padStart(widths[c]) : v.padEnd(widths[c])))
      .join('  ')
      .trimEnd();
  return [fmt(header), ...lines.map(fmt)].join('\n');
}

// ------------------------------------------------------------------------------------------------ explicit

/** Error messages quote the prompt at most this long, so a 10 KB prompt is not repeated in every message. */
const MAX_QUOTED_PROMPT = 120;
const MAX_LISTED_WORDS = 80;

function quotePrompt(prompt: string): string {
  return JSON.stringify(prompt.length > MAX_QUOTED_PROMPT ? `${prompt.slice(0, MAX_QUOTED_PROMPT - 1)}…` : prompt);
}

function pieceIndex(w: WordPieces, rule: PieceRule): number {
  return rule === 'first' ? w.start : w.end - 1;
}

function isNone(v: unknown): boolean {
  return (
    v === null ||
    v === undefined ||
    v === '' ||
    v === '-' ||
    v === 'none' ||
    (typeof v === 'number' && v <= 0) ||
    (typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) && Number(v) <= 0)
  );
}

function asIndex(v: number | string): number | null {
  if (typeof v === 'number') return v;
  return /^\s*-?\d+\s*$/.test(v) ? Number(v) : null;
}

function checkIndex(index: number, field: string, rows: TokenTableRow[], prompt: string): TokenTableRow {
  const pieces = rows.filter((r) => r.kind === 'token');
  const last = pieces.length > 0 ? pieces[pieces.length - 1].index : 0;
  const table = `\nTokens of ${quotePrompt(prompt)}:\n${formatTokenTable(rows)}`;
  if (!Number.isInteger(index)) {
    throw new RangeError(`Expected an integer token index for ${field} but received ${index}.${table}`);
  }
  if (pieces.length === 0) throw new RangeError(`${field}: the prompt has no tokens to select.${table}`);
  const row = pieces.find((r) => r.index === index);
  if (!row) {
    const what = index === 0 ? ' (index 0 is the start token)' : index === last + 1 ? ' (that is the end token)' : index > last + 1 ? ' (that is padding)' : '';
    throw new RangeError(
      `Expected a token index between 1 and ${last} for ${field} but received ${index}${what}; indices count from the start token = 0.${table}`,
    );
  }
  return row;
}

function describeWord(w: WordPieces, rule: PieceRule, role: TokenRole, slot: number, source: TokenChoice['source']): TokenChoice {
  const index = pieceIndex(w, rule);
  return { role, slot, word: w.word, wordIndex: w.wordIndex, piece: w.pieces[index - w.start], index, source };
}

function finish(prompt: string, objects: TokenChoice[], attributes: Array<TokenChoice | null>, table: TokenTableRow[]): TokenSelection {
  const seen = new Map<number, string>();
  for (const c of [...objects, ...attributes.filter((a): a is TokenChoice => a !== null)]) {
    const prev = seen.get(c.index);
    const label = `${c.role} ${c.slot} ("${c.word}")`;
    if (prev !== undefined) {
      throw new RangeError(
        `Token index ${c.index} is chosen twice (${prev} and ${label}); each object and attribute needs its own token.\nTokens of ${quotePrompt(prompt)}:\n${formatTokenTable(table)}`,
      );
    }
    seen.set(c.index, label);
  }
  const attributeIndices = attributes.some((a) => a !== null) ? attributes.map((a) => (a ? a.index : null)) : null;
  const choices = [...objects, ...attributes.filter((a): a is TokenChoice => a !== null)].sort((a, b) => a.slot - b.slot || (a.role === 'object' ? -1 : 1));
  return { prompt, tokenIndices: objects.map((o) => o.index), attributeIndices, choices, table };
}

function checkSpecArrays(spec: SelectionSpec): void {
  if (spec.objects !== undefined && (!Array.isArray(spec.objects) || spec.objects.length === 0)) {
    throw new TypeError('Expected a non-empty array of token indices or words for objects (omit it for automatic selection)');
  }
  if (spec.attributes !== undefined && spec.attributes !== null) {
    if (!Array.isArray(spec.attributes)) throw new TypeError('Expected an array (aligned with objects) for attributes');
    if (spec.objects === undefined) throw new TypeError('attributes need objects: pass objects too, aligned one to one');
    if (spec.attributes.length !== spec.objects.length) {
      throw new RangeError(
        `attributes has ${spec.attributes.length} entries but objects has ${spec.objects.length}; align them one to one and use null (or 0, "-") for "no attribute"`,
      );
    }
  }
  if (spec.piece !== undefined && spec.piece !== 'last' && spec.piece !== 'first') {
    throw new RangeError(`Expected 'last' or 'first' for piece but received ${JSON.stringify(spec.piece)}`);
  }
}

// ---------------------------------------------------------------------------------------------------- words

/** Finds `dog`, `dog#2` (2nd occurrence) or a phrase `teddy bear` (its last word is the one chosen). */
function findWord(tokenizer: ClipTokenizer, words: WordPieces[], spec: string, field: string, prompt: string): WordPieces {
  const m = /^(.*?)(?:#(\d+))?$/.exec(spec.trim());
  const text = m?.[1] ?? '';
  const nth = m?.[2] !== undefined ? Number(m[2]) : 1;
  const needle = tokenizer.wordPieces(text).map((w) => w.word);
  const listing = `\nWords of ${quotePrompt(prompt)}: ${words
    .slice(0, MAX_LISTED_WORDS)
    .map((w) => w.word)
    .join(' ')}${words.length > MAX_LISTED_WORDS ? ' …' : ''}`;
  if (needle.length === 0) throw new RangeError(`${field}: ${JSON.stringify(spec)} contains no word.${listing}`);
  if (nth < 1) throw new RangeError(`${field}: occurrence #${nth} in ${JSON.stringify(spec)} must be 1 or more`);
  const hits: number[] = [];
  for (let i = 0; i + needle.length <= words.length; i++) {
    if (needle.every((n, k) => words[i + k].word === n)) hits.push(i + needle.length - 1);
  }
  if (hits.length === 0) throw new RangeError(`${field}: ${JSON.stringify(text)} is not a word of the prompt.${listing}`);
  if (nth > hits.length) throw new RangeError(`${field}: ${JSON.stringify(text)} occurs ${hits.length} time(s), so #${nth} does not exist.${listing}`);
  const w = words[hits[nth - 1]];
  if (w.truncated)
    throw new RangeError(`${field}: ${JSON.stringify(text)} lies beyond the ${tokenizer.maxLength}-token limit and was cut off; shorten the prompt.`);
  return w;
}

// ----------------------------------------------------------------------------------------------- automatic

type Cat = 'det' | 'value' | 'adj' | 'noun' | 'verb' | 'prep' | 'conj' | 'adv' | 'punct' | 'other';

/** Prepositions that place the noun after them in the scene (background) rather than next to the subject. */
const SCENE_PREPS = new Set([
  'in',
  'on',
  'at',
  'inside',
  'into',
  'onto',
  'within',
  'of',
  'during',
  'across',
  'through',
  'throughout',
  'along',
  'amid',
  'amidst',
  'among',
  'from',
  'upon',
  'against',
  'around',
  'towards',
  'toward',
  'to',
  'for',
  'by',
]);
/** Words that are prepositions before a noun phrase even when the tagger says otherwise ("tracks under a bridge"). */
const PREPOSITIONS = new Set([
  ...SCENE_PREPS,
  'with',
  'under',
  'underneath',
  'beneath',
  'below',
  'above',
  'over',
  'behind',
  'beside',
  'besides',
  'near',
  'next',
  'down',
  'up',
  'between',
  'beyond',
  'past',
  'without',
  'atop',
  'outside',
  'like',
]);
const DETERMINERS = new Set([
  'a',
  'an',
  'the',
  'one',
  'two',
  'three',
  'four',
  'five',
  'six',
  'seven',
  'eight',
  'nine',
  'ten',
  'some',
  'many',
  'several',
  'this',
  'that',
  'these',
  'those',
  'his',
  'her',
  'their',
  'its',
  'my',
  'our',
  'your',
  'each',
  'every',
]);
/** Colour words win over other adjectives as the attribute (Divide & Bind binds colours in its examples). */
const COLOURS = new Set([
  'red',
  'green',
  'blue',
  'yellow',
  'orange',
  'purple',
  'pink',
  'brown',
  'black',
  'white',
  'gray',
  'grey',
  'violet',
  'cyan',
  'magenta',
  'golden',
  'gold',
  'silver',
  'beige',
  'turquoise',
  'teal',
  'maroon',
  'navy',
  'crimson',
  'scarlet',
  'indigo',
  'lime',
  'olive',
  'tan',
  'ivory',
  'bronze',
  'copper',
  'lavender',
  'blond',
  'blonde',
]);
const SENTENCE_PUNCT = /^[,.;:!?()[\]{}|"]+$/;

interface Tagged {
  w: WordPieces;
  cat: Cat;
}

function categorise(tags: Set<string>, word: string): Cat {
  if (DETERMINERS.has(word) && !tags.has('Noun')) return word === 'a' || word === 'an' || word === 'the' || tags.has('Determiner') ? 'det' : 'value';
  if (tags.has('Determiner')) return 'det';
  if (tags.has('Value') || tags.has('Cardinal')) return 'value';
  if (tags.has('Preposition')) return 'prep';
  if (tags.has('Conjunction')) return 'conj';
  if (tags.has('Pronoun')) return 'other';
  if (tags.has('Adjective') || tags.has('Comparable')) return 'adj';
  if (tags.has('Noun')) return 'noun';
  if (tags.has('Gerund') || tags.has('Verb') || tags.has('Participle')) return 'verb';
  if (tags.has('Adverb')) return 'adv';
  return 'other';
}

/** Part-of-speech categories for the CLIP words of the prompt, from compromise run on the (cased) prompt. */
function tagWords(prompt: string, words: WordPieces[]): Tagged[] {
  const clean = cleanText(prompt);
  const cased = normalizeText(prompt);
  const source = cased.length === clean.length && cased.toLowerCase() === clean ? cased : clean;
  // Rebuild the text with a space after sentence punctuation that touches the next word ("street,snowy"), tracking
  // where each CLIP word lands, so compromise's term offsets map back onto CLIP words.
  let text = '';
  const at: number[] = [];
  words.forEach((w, i) => {
    const prev = i > 0 ? words[i - 1] : null;
    let gap = prev ? clean.slice(prev.charEnd, w.charStart) : '';
    if (prev && gap === '' && SENTENCE_PUNCT.test(prev.word) && w.isAlpha) gap = ' ';
    text += gap;
    at.push(text.length);
    text += source.slice(w.charStart, w.charEnd);
  });
  const terms: Array<{ start: number; end: number; tags: Set<string> }> = [];
  type Json = Array<{ terms: Array<{ tags: string[]; offset: { start: number; length: number } }> }>;
  for (const s of nlp(text).json({ offset: true, terms: { offset: true } }) as Json) {
    for (const t of s.terms) terms.push({ start: t.offset.start, end: t.offset.start + t.offset.length, tags: new Set(t.tags) });
  }
  const tagged: Tagged[] = words.map((w, i) => {
    if (!w.isAlpha) return { w, cat: /^\p{N}+$/u.test(w.word) ? 'value' : 'punct' };
    const s = at[i];
    const e = s + w.word.length;
    const term = terms.find((t) => t.start < e && s < t.end);
    return { w, cat: categorise(term?.tags ?? new Set(), w.word) };
  });
  // Repairs where a tagger's guess contradicts the local grammar.
  for (let i = 0; i < tagged.length; i++) {
    const cur = tagged[i];
    const prev = i > 0 ? tagged[i - 1] : null;
    const next = i + 1 < tagged.length ? tagged[i + 1] : null;
    const nextStartsNp = next !== null && ['det', 'value', 'adj', 'noun'].includes(next.cat);
    if (PREPOSITIONS.has(cur.w.word) && nextStartsNp && cur.cat !== 'det') cur.cat = 'prep';
    else if (COLOURS.has(cur.w.word) && next !== null && (next.cat === 'noun' || next.cat === 'verb')) cur.cat = 'adj';
    // "-ing" right after a noun is a participle ("ironman cooking in …", "train driving down …").
    else if (cur.cat === 'noun' && /ing$/.test(cur.w.word) && prev?.cat === 'noun') cur.cat = 'verb';
    // After a determiner or adjective a word tagged as a verb is a noun ("a bow", "a fly").
    else if (cur.cat === 'verb' && prev !== null && (prev.cat === 'det' || prev.cat === 'adj') && !/ing$/.test(cur.w.word)) cur.cat = 'noun';
  }
  return tagged;
}

interface NounPhrase {
  words: Tagged[];
  head: Tagged;
  hasDet: boolean;
  modifiers: Tagged[];
  governing: string | null;
}

function nounPhrases(segment: Tagged[]): NounPhrase[] {
  const out: NounPhrase[] = [];
  let i = 0;
  while (i < segment.length) {
    const startCat = segment[i].cat;
    if (!['det', 'value', 'adj', 'noun'].includes(startCat)) {
      i++;
      continue;
    }
    const governing = i > 0 && segment[i - 1].cat === 'prep' ? segment[i - 1].w.word : null;
    const np: Tagged[] = [];
    while (i < segment.length && ['det', 'value'].includes(segment[i].cat)) np.push(segment[i++]);
    while (i < segment.length && ['adj', 'noun', 'adv'].includes(segment[i].cat)) np.push(segment[i++]);
    const hasDet = np.some((x) => x.cat === 'det' || x.cat === 'value');
    let headAt = -1;
    for (let k = np.length - 1; k >= 0; k--)
      if (np[k].cat === 'noun') {
        headAt = k;
        break;
      }
    // With a determiner the phrase must have a head even if the tagger called it something else ("a orange").
    if (headAt < 0 && hasDet && np.length > 0 && np[np.length - 1].cat !== 'det' && np[np.length - 1].cat !== 'value') headAt = np.length - 1;
    if (headAt >= 0) {
      const head = np[headAt];
      if (head.w.isAlpha) {
        out.push({ words: np, head, hasDet, modifiers: np.slice(0, headAt).filter((x) => x.cat === 'adj' || COLOURS.has(x.w.word)), governing });
      }
    }
    if (np.length === 0) i++;
  }
  return out;
}

/**
 * Does a later comma segment open with a subject ("a …", "two …", "3 cats")? Digits glued to letters ("8k", "4k")
 * are resolution tags, not counts.
 */
function startsSubject(seg: Tagged[]): boolean {
  const first = seg[0];
  if (first.cat === 'det') return true;
  if (first.cat !== 'value') return false;
  if (first.w.isAlpha) return true;
  let k = 0;
  while (k + 1 < seg.length && /^\p{N}$/u.test(seg[k + 1].w.word) && seg[k + 1].w.charStart === seg[k].w.charEnd) k++;
  const next = seg[k + 1];
  return next !== undefined && next.w.charStart > seg[k].w.charEnd;
}

function pickModifier(mods: Tagged[]): Tagged | null {
  for (let k = mods.length - 1; k >= 0; k--) if (COLOURS.has(mods[k].w.word)) return mods[k];
  return mods.length > 0 ? mods[mods.length - 1] : null;
}

/**
 * Heuristic subject finder. Rules (documented for users; no prompt is special-cased):
 *  1. Segments are split at sentence punctuation. The first segment always counts; a later one only when it starts
 *     with a determiner or a count ("…, a dog and a frog", "…, two cats"), since SD prompts put style words after
 *     commas ("…, 8k, ultra hd").
 *  2. Noun phrases are chunked from the tags; the head is the last noun. An object is a head not governed by a
 *     scene preposition (in, on, at, of, …): "a cat on the street" → cat; "a train under a bridge" → train, bridge.
 *  3. The attribute of an object is the adjective before its head (a colour if there is one).
 *  4. "X with green suit" (with + adjectives + noun, no determiner) describes X: green becomes X's attribute and
 *     suit is not an object; "X with a hat" (determiner) makes the hat an object.
 */
export function autoChoose(tokenizer: ClipTokenizer, prompt: string): Array<{ object: WordPieces; attribute: WordPieces | null }> {
  const words = tokenizer.wordPieces(prompt).filter((w) => !w.truncated);
  const tagged = tagWords(prompt, words);
  const segments: Tagged[][] = [[]];
  for (const t of tagged) {
    if (t.cat === 'punct' && SENTENCE_PUNCT.test(t.w.word)) segments.push([]);
    else segments[segments.length - 1].push(t);
  }
  const chosen: Array<{ object: WordPieces; attribute: WordPieces | null }> = [];
  segments.forEach((seg, si) => {
    if (seg.length === 0) return;
    if (si > 0 && !startsSubject(seg)) return;
    for (const np of nounPhrases(seg)) {
      if (np.governing !== null && SCENE_PREPS.has(np.governing)) continue;
      const mod = pickModifier(np.modifiers);
      if (np.governing === 'with' && !np.hasDet && mod !== null && chosen.length > 0) {
        const owner = chosen[chosen.length - 1];
        if (owner.attribute === null) owner.attribute = mod.w;
        continue;
      }
      chosen.push({ object: np.head.w, attribute: mod ? mod.w : null });
    }
  });
  return chosen;
}

// ------------------------------------------------------------------------------------------------- entry

/**
 * Resolves objects/attributes to token indices. `spec.objects` holds indices (numbers or digit strings) or words;
 * without objects the choice is automatic (autoChoose). Invalid choices throw a RangeError that names the field
 * and shows the token table.
 */
export function selectTokens(tokenizer: ClipTokenizer, prompt: string, spec: SelectionSpec = {}): TokenSelection {
  if (typeof prompt !== 'string') throw new TypeError(`Expected a string for prompt but received ${prompt === null ? 'null' : typeof prompt}`);
  if (spec === null || typeof spec !== 'object') throw new TypeError('Expected an object ({ objects?, attributes?, piece? }) for the token selection');
  checkSpecArrays(spec);
  const rule: PieceRule = spec.piece ?? 'last';
  const table = tokenTable(tokenizer, prompt);
  const words = tokenizer.wordPieces(prompt);
  const byIndex = new Map<number, WordPieces>();
  for (const w of words) for (let k = w.start; k < w.end; k++) byIndex.set(k, w);

  const resolve = (v: number | string, field: string, role: TokenRole, slot: number): TokenChoice => {
    if (typeof v !== 'number' && typeof v !== 'string') {
      throw new TypeError(`Expected a token index or a word for ${field} but received ${v === null ? 'null' : typeof v}`);
    }
    const idx = asIndex(v);
    if (idx !== null) {
      const row = checkIndex(idx, field, table, prompt);
      const w = byIndex.get(row.index)!;
      return { role, slot, word: w.word, wordIndex: w.wordIndex, piece: row.piece, index: row.index, source: 'index' };
    }
    return describeWord(findWord(tokenizer, words, String(v), field, prompt), rule, role, slot, 'word');
  };

  if (spec.objects === undefined) {
    const auto = autoChoose(tokenizer, prompt);
    if (auto.length === 0) {
      throw new RangeError(`No object noun found in ${quotePrompt(prompt)}; pass objects explicitly (words or token indices).\n${formatTokenTable(table)}`);
    }
    const objects = auto.map((a, slot) => describeWord(a.object, rule, 'object', slot, 'auto'));
    const attributes = auto.map((a, slot) => (a.attribute ? describeWord(a.attribute, rule, 'attribute', slot, 'auto') : null));
    return finish(prompt, objects, attributes, table);
  }
  const objects = spec.objects.map((v, slot) => {
    if (typeof v === 'number' && v <= 0) {
      throw new RangeError(
        `Expected a token index between 1 and ${table.length - 2} for objects[${slot}] but received ${v}; only attributes may be empty.\n${formatTokenTable(table)}`,
      );
    }
    return resolve(v, `objects[${slot}]`, 'object', slot);
  });
  const attributes = (spec.attributes ?? objects.map(() => null)).map((v, slot) =>
    isNone(v) ? null : resolve(v as number | string, `attributes[${slot}]`, 'attribute', slot),
  );
  return finish(prompt, objects, attributes, table);
}
