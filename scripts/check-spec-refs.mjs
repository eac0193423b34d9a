#!/usr/bin/env node
// Fails when a "§n" citation in the sources does not resolve to a section of the docs in docs/.
//
// A citation resolves against docs/onnx-export.md when its line names onnx-export.md, else against
// docs/divide-and-bind.md ("spec §3" means docs/divide-and-bind.md §3); inside docs/, a bare § means the file
// itself. A line that points at a spec outside the repository (../shared/spec/…, onnx-and-runtime.md) is an error
// too: the docs in docs/ are the project's spec. Sections are the numbered headings ("## 2. Losses", "### 2.1 …").
//
// Usage: node scripts/check-spec-refs.mjs [paths...]   (default: lib native tools bench test scripts docs README.md
// CONTRIBUTING.md)
import * as fs from 'node:fs';
import * as path from 'node:path';

const DEFAULT_TARGETS = ['lib', 'native', 'tools', 'bench', 'test', 'scripts', 'docs', 'README.md', 'CONTRIBUTING.md'];
const TEXT_EXTENSIONS = new Set(['.ts', '.js', '.mjs', '.cjs', '.cc', '.h', '.cu', '.cuh', '.py', '.md', '.sh', '.txt', '.cmake']);
const SKIP_DIRS = new Set(['node_modules', 'dist', 'build', '__pycache__']);
const MAIN_DOC = 'docs/divide-and-bind.md';
const ONNX_DOC = 'docs/onnx-export.md';
const OUTSIDE = /shared\/spec|onnx-and-runtime\.md/;

/** Section numbers of a Markdown file: "## 1. Title" → "1", "### 2.1 Title" → "2.1". */
export function sectionsOf(markdown) {
  const out = new Set();
  for (const line of markdown.split('\n')) {
    const m = /^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s/.exec(line);
    if (m) out.add(m[1]);
  }
  return out;
}

/** Problems of one file's text: { line, message }. `docs` maps a doc path to its section set. */
export function checkText(file, text, docs) {
  const problems = [];
  const inDocs = file.startsWith('docs/');
  text.split('\n').forEach((line, k) => {
    const refs = [...line.matchAll(/§\s?(\d+(?:\.\d+)*)/g)].map((m) => m[1]);
    if (refs.length === 0) return;
    if (OUTSIDE.test(line)) {
      problems.push({ line: k + 1, message: `cites a spec outside the repository; cite ${MAIN_DOC} or ${ONNX_DOC}` });
      return;
    }
    let doc = MAIN_DOC;
    if (/onnx-export\.md/.test(line)) doc = ONNX_DOC;
    else if (inDocs && !/divide-and-bind\.md/.test(line)) doc = file;
    const sections = docs.get(doc);
    if (sections === undefined) {
      problems.push({ line: k + 1, message: `cites ${doc}, which does not exist` });
      return;
    }
    for (const ref of refs) {
      if (!sections.has(ref)) problems.push({ line: k + 1, message: `§${ref} is not a section of ${doc}` });
    }
  });
  return problems;
}

function collect(target, files) {
  if (!fs.existsSync(target)) return files;
  const stat = fs.statSync(target);
  if (stat.isDirectory()) {
    if (SKIP_DIRS.has(path.basename(target))) return files;
    for (const entry of fs.readdirSync(target).sort()) collect(path.join(target, entry), files);
  } else if (TEXT_EXTENSIONS.has(path.extname(target))) {
    files.push(target);
  }
  return files;
}

function main(argv) {
  const docs = new Map();
  for (const doc of [MAIN_DOC, ONNX_DOC]) {
    if (fs.existsSync(doc)) docs.set(doc, sectionsOf(fs.readFileSync(doc, 'utf8')));
  }
  const files = (argv.length > 0 ? argv : DEFAULT_TARGETS).flatMap((t) => collect(t, []));
  let count = 0;
  for (const file of files) {
    const rel = path.relative('.', file).split(path.sep).join('/');
    for (const p of checkText(rel, fs.readFileSync(file, 'utf8'), docs)) {
      console.log(`${rel}:${p.line}: ${p.message}`);
      count++;
    }
  }
  console.log(`check-spec-refs: ${files.length} files, ${count} unresolved § citations`);
  return count > 0 ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = main(process.argv.slice(2));
