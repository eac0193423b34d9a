#!/usr/bin/env node
// Fails when a C++/CUDA function body in native/ has more than MAX_LINES lines of code (blank lines and comment-only
// lines not counted, the lines holding the braces not counted). The same rule as Biome's noExcessiveLinesPerFunction
// for the TypeScript in lib/ (biome.json), which has no C++ counterpart.
//
// Usage: node scripts/check-function-length.mjs [--max N] [paths...]   (default: native/, 80)
//
// It is a brace matcher, not a C++ parser: comments, string and character literals and preprocessor lines are blanked
// first; a `{` outside any function opens a function body when the text before it (since the last `;`, `{` or `}`)
// contains a parameter list, and a scope when it follows namespace/class/struct/union/enum/extern. Aggregate
// initialisers (`= {…}`, `x{…}`) are neither. Every nested brace (blocks, lambdas) belongs to its function.
import * as fs from 'node:fs';
import * as path from 'node:path';

const EXTENSIONS = new Set(['.cc', '.cpp', '.cxx', '.h', '.hh', '.hpp', '.cu', '.cuh']);

/** Source with comments, literals and preprocessor lines replaced by spaces (newlines kept) and per-line code flags. */
export function blank(source) {
  const out = [];
  let i = 0;
  let lineHasCode = false;
  const codeLines = [];
  let lineStart = true;
  const push = (ch, isCode) => {
    out.push(ch);
    if (ch === '\n') {
      codeLines.push(lineHasCode);
      lineHasCode = false;
      lineStart = true;
    } else if (isCode && ch.trim() !== '') {
      lineHasCode = true;
    }
  };
  while (i < source.length) {
    const c = source[i];
    const next = source[i + 1];
    if (lineStart && c !== '\n' && c.trim() === '') {
      push(c, false);
      i++;
      continue;
    }
    if (lineStart && c === '#') {
      // Preprocessor line (with backslash continuations): counts as code, takes no part in brace matching.
      while (i < source.length && source[i] !== '\n') {
        if (source[i] === '\\' && source[i + 1] === '\n') {
          push(' ', false);
          push('\n', false);
          lineHasCode = true;
          i += 2;
          continue;
        }
        push(source[i].trim() === '' ? source[i] : '#', true);
        i++;
      }
      continue;
    }
    lineStart = false;
    if (c === '/' && next === '/') {
      while (i < source.length && source[i] !== '\n') {
        push(' ', false);
        i++;
      }
      continue;
    }
    if (c === '/' && next === '*') {
      push(' ', false);
      push(' ', false);
      i += 2;
      while (i < source.length && !(source[i] === '*' && source[i + 1] === '/')) {
        push(source[i] === '\n' ? '\n' : ' ', false);
        i++;
      }
      push(' ', false);
      push(' ', false);
      i += 2;
      continue;
    }
    if (c === '"' || (c === "'" && !/[0-9A-Fa-f]/.test(source[i - 1] ?? ''))) {
      push(c, true);
      i++;
      while (i < source.length && source[i] !== c && source[i] !== '\n') {
        if (source[i] === '\\') {
          push(' ', true);
          i++;
        }
        push(' ', true);
        i++;
      }
      if (i < source.length && source[i] === c) {
        push(c, true);
        i++;
      }
      continue;
    }
    push(c, true);
    i++;
  }
  codeLines.push(lineHasCode);
  return { text: out.join(''), codeLines };
}

/** What a `{` opens, judged from the text since the previous statement or scope boundary. */
function classify(head, insideFunction) {
  if (insideFunction) return 'block';
  const h = head.replace(/\s+/g, ' ').trim();
  if (/\b(namespace|class|struct|union|enum)\b/.test(h) && !/\)\s*(const\b|noexcept\b|override\b|final\b|->|$)/.test(h)) {
    return 'scope';
  }
  if (/^extern\b/.test(h) && !h.includes('(')) return 'scope';
  if (!h.includes('(') || /(=|,|\breturn)$/.test(h)) return 'other';
  // `name{` right after a constructor's `) :` is a member initialiser, not the body.
  if (/\)\s*:[^;]*[A-Za-z0-9_>]$/.test(h)) return 'other';
  return 'function';
}

/** Function name: the identifier before the parameter list (the last top-level `(…)` before any `: init-list`). */
function nameOf(head) {
  const h = head.replace(/\s+/g, ' ').trim();
  const groups = [];
  let depth = 0;
  for (let i = 0; i < h.length; i++) {
    if (h[i] === '(' && depth++ === 0) groups.push(i);
    else if (h[i] === ')') depth--;
    else if (depth === 0 && h[i] === ':' && h[i + 1] !== ':' && h[i - 1] !== ':' && groups.length > 0) break;
  }
  const open = groups.at(-1);
  if (open === undefined) return h.slice(0, 60);
  const m = /([~A-Za-z_][\w:<>~]*(?:operator\S*)?)\s*$/.exec(h.slice(0, open));
  return m ? m[1] : h.slice(0, 60);
}

/** Functions of one source text: { name, line (1-based, of the opening brace), lines (code lines of the body) }. */
export function functionsOf(source) {
  const { text, codeLines } = blank(source);
  const stack = [];
  const found = [];
  let headStart = 0;
  let line = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') line++;
    else if (c === ';' && !stack.some((f) => f.kind === 'function' || f.kind === 'other')) headStart = i + 1;
    else if (c === '{') {
      const insideFunction = stack.some((f) => f.kind === 'function');
      const insideOther = stack.some((f) => f.kind === 'other');
      const head = text.slice(headStart, i);
      const kind = insideOther && !insideFunction ? 'other' : classify(head, insideFunction);
      stack.push({ kind, line, name: kind === 'function' ? nameOf(head) : '' });
      if (kind === 'scope' || kind === 'function') headStart = i + 1;
    } else if (c === '}') {
      const frame = stack.pop();
      if (frame === undefined) continue;
      if (frame.kind === 'function') {
        let lines = 0;
        for (let l = frame.line + 1; l < line; l++) if (codeLines[l]) lines++;
        found.push({ name: frame.name, line: frame.line + 1, lines });
      }
      if (frame.kind !== 'other' && frame.kind !== 'block') headStart = i + 1;
    }
  }
  return found;
}

function collect(target, files) {
  const stat = fs.statSync(target);
  if (stat.isDirectory()) {
    for (const entry of fs.readdirSync(target).sort()) collect(path.join(target, entry), files);
  } else if (EXTENSIONS.has(path.extname(target))) {
    files.push(target);
  }
  return files;
}

function main(argv) {
  let max = 80;
  const targets = [];
  for (let k = 0; k < argv.length; k++) {
    if (argv[k] === '--max') max = Number(argv[++k]);
    else targets.push(argv[k]);
  }
  if (!Number.isInteger(max) || max < 1) {
    console.error('check-function-length: --max needs a positive integer');
    return 2;
  }
  const files = (targets.length > 0 ? targets : ['native']).flatMap((t) => collect(t, []));
  const over = [];
  for (const file of files) {
    for (const f of functionsOf(fs.readFileSync(file, 'utf8'))) if (f.lines > max) over.push({ file, ...f });
  }
  for (const f of over) console.log(`${f.file}:${f.line}: ${f.name} has ${f.lines} lines of code (max ${max})`);
  console.log(`check-function-length: ${files.length} C++/CUDA files, ${over.length} functions over ${max} lines`);
  return over.length > 0 ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = main(process.argv.slice(2));
