/**
 * CLIP BPE tokenizer. Oracles: (1) golden ids/pieces from an independent Python CLIP tokenizer for the tiny model's
 * vocab (test/fixtures/golden/tokenizer/tokens.json, exact match); (2) hand-built vocabularies below whose expected
 * pieces follow from the BPE definition by hand.
 * The real-vocab test vector "An astronaut riding a horse" → [49406, 550, 18376, 6765, 320, 4558, 49407] needs the
 * 49408-entry openai/clip-vit-large-patch14 vocab, which is not in the repo, so it is not checked here.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ClipTokenizer, EOT_TOKEN, SOT_TOKEN, cleanText } from '../../lib/tokenizer/clip';

const ROOT = path.resolve(__dirname, '../../..');
const TINY = path.join(ROOT, 'test', 'fixtures', 'models', 'tiny-sd', 'tokenizer');
const GOLDEN = path.join(ROOT, 'test', 'fixtures', 'golden', 'tokenizer', 'tokens.json');

interface GoldenCase {
  name: string;
  prompt: string;
  pieces: string[];
  ids: number[];
  truncated: boolean;
}

test('matches every golden case of the tiny model exactly (ids, pieces, truncation)', (t) => {
  const golden = JSON.parse(fs.readFileSync(GOLDEN, 'utf8')) as { sot: number; eot: number; maxLength: number; cases: GoldenCase[] };
  const tok = ClipTokenizer.fromDirectory(TINY);
  t.is(tok.sotId, golden.sot);
  t.is(tok.eotId, golden.eot);
  t.is(tok.maxLength, golden.maxLength);
  t.true(golden.cases.length >= 20);
  for (const c of golden.cases) {
    const e = tok.encode(c.prompt);
    t.deepEqual(e.tokens, c.pieces, `${c.name}: pieces`);
    t.deepEqual(e.ids, c.ids, `${c.name}: ids`);
    t.is(e.truncated, c.truncated, `${c.name}: truncated`);
    t.is(e.length, Math.min(c.pieces.length, 75) + 2, `${c.name}: length`);
  }
});

test('fromDirectory accepts the model folder and reads pad/max length from the configs', (t) => {
  const tok = ClipTokenizer.fromDirectory(path.dirname(TINY));
  t.is(tok.padId, tok.eotId);
  t.is(tok.padToken, EOT_TOKEN);
  t.throws(() => ClipTokenizer.fromDirectory(path.join(ROOT, 'no-such-dir')), {
    message: /cannot read .*vocab\.json \(ENOENT\); expected a CLIP tokenizer folder/,
  });
});

// ------------------------------------------------------------------------------------- hand-built vocabulary

/** The 256 byte symbols, each alone and with </w>, plus extra symbols and the specials. */
function handVocab(extra: string[], specialsFirst = false): Record<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const chars = bs.map((b) => String.fromCodePoint(b));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) chars.push(String.fromCodePoint(256 + n++));
  const list = specialsFirst ? ['!', ...chars.filter((c) => c !== '!')] : chars;
  const tokens = [...list, ...list.map((c) => `${c}</w>`), ...extra, SOT_TOKEN, EOT_TOKEN];
  return Object.fromEntries(tokens.map((tk, i) => [tk, i]));
}

const MERGES = ['l o', 'e r</w>', 'lo w', 'low er</w>', 'a a', 'n e', 'ne w</w>', 'lo w</w>'];
const hand = new ClipTokenizer(handVocab(['lo', 'er</w>', 'low', 'lower</w>', 'aa', 'ne', 'new</w>', 'low</w>']), MERGES);

test('BPE applies merges by rank, not by position, and marks the word end with </w>', (t) => {
  // l o w e r</w> → (l o)=0 → lo w e r</w> → (e r</w>)=1 → lo w er</w> → (lo w)=2 → low er</w> → (low er</w>)=3.
  t.deepEqual(hand.encode('lower').tokens, ['lower</w>']);
  // "low" ends the word: (lo w</w>) has rank 7 and applies; (lo w) never sees the </w> symbol.
  t.deepEqual(hand.encode('low').tokens, ['low</w>']);
  // "lowe": l o w e</w> → lo w e</w> → low e</w>; (low e</w>) has no rank.
  t.deepEqual(hand.encode('lowe').tokens, ['low', 'e</w>']);
  // Pairs merge left to right without overlap: a a a</w> → aa a</w>.
  t.deepEqual(hand.encode('aaa').tokens, ['aa', 'a</w>']);
  t.deepEqual(hand.encode('aaaa').tokens, ['aa', 'a', 'a</w>']);
  // Same rank order with a reversed merge list gives other pieces: rank decides.
  const reversed = new ClipTokenizer(handVocab(['lo', 'er</w>', 'low', 'lower</w>', 'aa', 'ne', 'new</w>', 'low</w>', 'we', 'r</w>']), [
    'w e',
    'l o',
    'e r</w>',
  ]);
  t.deepEqual(reversed.encode('lower').tokens, ['lo', 'we', 'r</w>']);
});

test('ids: SOT first, EOT after the last piece, EOT padding to 77', (t) => {
  const e = hand.encode('lower new');
  const v = handVocab(['lo', 'er</w>', 'low', 'lower</w>', 'aa', 'ne', 'new</w>', 'low</w>']);
  t.deepEqual(e.tokens, ['lower</w>', 'new</w>']);
  t.is(e.ids.length, 77);
  t.is(e.ids[0], hand.sotId);
  t.is(e.ids[1], hand.pieceId('lower</w>'));
  t.is(e.ids[2], hand.pieceId('new</w>'));
  t.is(e.ids[3], hand.eotId);
  t.true(e.ids.slice(4).every((id) => id === hand.eotId));
  t.is(e.length, 4);
  t.false(e.truncated);
  t.is(e.ids[1], v['lower</w>'] ?? -1);
});

test('bytes: non-ASCII text goes through the byte table; pieces missing from the vocab map to the unknown (EOT) id', (t) => {
  // "é" is UTF-8 C3 A9 → symbols "Ã" and "©" (both printable Latin-1, kept as they are).
  t.deepEqual(hand.encode('é').tokens, ['Ã', '©</w>']);
  // Snowman U+2603 = E2 98 83 → "â", then 0x98 and 0x83 which map above U+0100.
  const snow = hand.encode('☃').tokens;
  t.is(snow.length, 3);
  t.is(snow[0], 'â');
  t.true(snow[1].codePointAt(0)! >= 256 && snow[2].endsWith('</w>') && snow[2].codePointAt(0)! >= 256);
  t.is(hand.decode(hand.encode('café ☃').ids), 'café ☃');
  // A vocab without the "©</w>" symbol: that piece becomes the unknown id, which CLIP sets to EOT.
  const v = handVocab([]);
  delete v['©</w>'];
  const holes = new ClipTokenizer(v, []);
  const e = holes.encode('é');
  t.deepEqual(e.tokens, ['Ã', '©</w>']);
  t.deepEqual(e.ids.slice(0, 4), [holes.sotId, v.Ã, holes.eotId, holes.eotId]);
});

test('text cleanup: HTML entities (twice), whitespace collapse, lower-case, CLIP split', (t) => {
  t.is(cleanText('  A&amp;amp;B \t\n C&lt;d&#62;e&#x41; '), 'a&b c<d>ea');
  t.deepEqual(hand.encode("It's 42,ok!").tokens, ['i', 't</w>', "'", 's</w>', '4</w>', '2</w>', ',</w>', 'o', 'k</w>', '!</w>']);
  t.deepEqual(hand.encode('<|endoftext|>').tokens, [EOT_TOKEN]);
});

test('truncation keeps 75 pieces + SOT + EOT', (t) => {
  const e = hand.encode(Array.from({ length: 80 }, () => 'low').join(' '));
  t.is(e.tokens.length, 80);
  t.true(e.truncated);
  t.is(e.length, 77);
  t.is(e.ids[76], hand.eotId);
  t.is(e.ids[75], hand.pieceId('low</w>'));
  const words = hand.wordPieces(Array.from({ length: 80 }, () => 'low').join(' '));
  t.deepEqual([words[74].start, words[74].end, words[74].truncated], [75, 76, false]);
  t.true(words[75].truncated);
});

test('SD 2.x style: pad token "!" (id 0) from special_tokens_map.json', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'divbind-tok-'));
  try {
    const vocab = handVocab(['lo', 'low</w>'], true);
    t.is(vocab['!'], 0);
    fs.writeFileSync(path.join(dir, 'vocab.json'), JSON.stringify(vocab));
    fs.writeFileSync(path.join(dir, 'merges.txt'), '#version: 0.2\nl o\nlo w</w>\n');
    fs.writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify({ pad_token: { content: '!', lstrip: false } }));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ model_max_length: 77, pad_token: '!' }));
    const tok = ClipTokenizer.fromDirectory(dir);
    const e = tok.encode('low low');
    t.deepEqual(e.ids.slice(0, 5), [tok.sotId, vocab['low</w>'], vocab['low</w>'], tok.eotId, 0]);
    t.true(e.ids.slice(4).every((id) => id === 0));
    t.is(e.ids.length, 77);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('wordPieces maps each word to its token index range (SOT = 0)', (t) => {
  const tok = ClipTokenizer.fromDirectory(TINY);
  const w = tok.wordPieces('a purple dog and a green bench on the street,snowy driving scene');
  t.deepEqual(
    w.map((x) => x.word),
    ['a', 'purple', 'dog', 'and', 'a', 'green', 'bench', 'on', 'the', 'street', ',', 'snowy', 'driving', 'scene'],
  );
  t.deepEqual(
    w.filter((x) => ['dog', 'bench', 'purple', 'green'].includes(x.word)).map((x) => x.start),
    [2, 3, 6, 7],
  );
  const multi = tok.wordPieces('an unbelievably gigantic skyscraper');
  const enc = tok.encode('an unbelievably gigantic skyscraper');
  t.is(multi[1].start, 2);
  t.is(multi[1].end - multi[1].start, multi[1].pieces.length);
  t.is(multi[2].start, multi[1].end);
  t.true(multi[1].pieces[multi[1].pieces.length - 1].endsWith('</w>'));
  t.deepEqual(enc.tokens.slice(multi[3].start - 1, multi[3].end - 1), multi[3].pieces);
  t.true(multi[1].isAlpha);
  t.false(tok.wordPieces('8k')[0].isAlpha);
});

test('decodePiece turns pieces and ids into text', (t) => {
  const tok = ClipTokenizer.fromDirectory(TINY);
  t.is(tok.decodePiece('dog</w>'), 'dog ');
  t.is(tok.decodePiece('do'), 'do');
  t.is(tok.decodePiece(tok.sotId), SOT_TOKEN);
  t.throws(() => tok.decodePiece(10 ** 7), { instanceOf: RangeError, message: /id 10000000 is not in the vocab/ });
  t.is(tok.decode(tok.encode('A train driving down the tracks under a bridge.').ids), 'a train driving down the tracks under a bridge .');
});

test('bad input is rejected with named errors', (t) => {
  t.throws(() => hand.encode(42 as unknown as string), { instanceOf: TypeError, message: 'Expected a string for prompt but received number' });
  t.throws(() => new ClipTokenizer({ a: 1 }, []), { instanceOf: RangeError, message: /no <\|startoftext\|> token/ });
  t.throws(() => new ClipTokenizer(handVocab([]), ['a b c']), { instanceOf: RangeError, message: /merges\[0\] must be two symbols/ });
  t.throws(() => new ClipTokenizer(handVocab([]), [], { padToken: '<pad>' }), { instanceOf: RangeError, message: /pad token "<pad>" is not in the vocab/ });
});
