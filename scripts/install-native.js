#!/usr/bin/env node
// npm `install` script of divbind-native: make sure the C++ addon loads, building it only when needed.
//  1. If a binary already loads (DIVBIND_NATIVE_PATH, build/Release, or a prebuild matching this platform), stop,
//     unless `npm rebuild --build-from-source` asked for a build.
//  2. Else build with cmake-js (CMakeLists.txt; CUDA kernels when nvcc is found, DIVBIND_CUDA=AUTO|ON|OFF),
//     falling back to node-gyp (binding.gyp, CPU only) when cmake-js or cmake is missing or fails.
//  3. On failure print what went wrong and how to fix it, and exit 0: the pure-TypeScript backend
//     (backend: 'js') still works. With DIVBIND_REQUIRE_NATIVE=1 (CI) a missing addon fails the install (exit 1).

const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');
const REQUIRED = process.env.DIVBIND_REQUIRE_NATIVE === '1';
const FROM_SOURCE = /^(true|1)$/i.test(process.env.npm_config_build_from_source || '');

function log(message) {
  console.log(`divbind-native: ${message}`);
}

// Loads the addon in a child process (a broken binary cannot take the installer down) and checks its exports.
function probe() {
  const code = `
    const path = require('node:path');
    const override = process.env.DIVBIND_NATIVE_PATH;
    const file = override ? path.resolve(override) : require('node-gyp-build').path(${JSON.stringify(ROOT)});
    const b = require(file);
    if (typeof b.attentionLoss !== 'function' || typeof b.attentionLossAsync !== 'function') {
      throw new Error(file + ' does not export attentionLoss / attentionLossAsync');
    }
    console.log(file + ' (' + b.features.build + ')');`;
  const r = spawnSync(process.execPath, ['-e', code], { cwd: ROOT, encoding: 'utf8' });
  if (r.status === 0) return { ok: true, detail: r.stdout.trim() };
  const lines = (r.stderr || r.error?.message || 'unknown error').trim().split('\n');
  const message = lines.find((l) => /Error/.test(l)) || lines[0];
  return { ok: false, detail: message };
}

// Node headers: use the ones installed next to this node (Debian's nodejs-dev, official tarballs) so no
// download is attempted; an explicit npm_config_nodedir wins.
function buildEnv() {
  const env = { ...process.env };
  if (!env.npm_config_nodedir) {
    const prefix = path.dirname(path.dirname(process.execPath));
    if (fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;
  }
  return env;
}

function run(what, args) {
  log(`building with ${what}: ${path.basename(process.execPath)} ${args.map((a) => path.relative(ROOT, a) || a).join(' ')}`);
  const start = Date.now();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, env: buildEnv(), stdio: 'inherit' });
  const seconds = ((Date.now() - start) / 1000).toFixed(1);
  if (r.status === 0) {
    log(`${what} finished in ${seconds} s`);
    return null;
  }
  return `${what} failed after ${seconds} s (${r.error ? r.error.message : `exit status ${r.status}`})`;
}

function have(command, args) {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  return r.status === 0 ? (r.stdout || r.stderr).split('\n')[0].trim() : null;
}

function main() {
  if (!FROM_SOURCE) {
    const existing = probe();
    if (existing.ok) {
      log(`native addon ready: ${existing.detail}`);
      return 0;
    }
  }
  if (process.env.DIVBIND_NATIVE_PATH) {
    log(`DIVBIND_NATIVE_PATH=${process.env.DIVBIND_NATIVE_PATH} does not load; building the local copy anyway`);
  }

  const failures = [];
  let cmakeJs = null;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [ROOT] });
  } catch {
    failures.push('cmake-js is not installed (it is a devDependency; production installs use prebuilds or node-gyp)');
  }
  const cmake = have('cmake', ['--version']);
  if (cmakeJs && !cmake) failures.push('cmake is not on PATH');
  if (cmakeJs && cmake) {
    const args = [cmakeJs, 'compile'];
    if (process.env.DIVBIND_CUDA) args.push(`--CDDIVBIND_CUDA=${process.env.DIVBIND_CUDA}`);
    const err = run(`cmake-js (${cmake})`, args);
    if (!err && probe().ok) return done();
    failures.push(err || `cmake-js built a binary that does not load: ${probe().detail}`);
  }

  // node-gyp: npm puts its bundled copy in npm_config_node_gyp for lifecycle scripts.
  const nodeGyp = process.env.npm_config_node_gyp;
  if (nodeGyp && fs.existsSync(nodeGyp)) {
    const err = run('node-gyp (CPU only)', [nodeGyp, 'rebuild', '--release']);
    if (!err && probe().ok) return done();
    failures.push(err || `node-gyp built a binary that does not load: ${probe().detail}`);
  } else {
    failures.push('node-gyp not available (run the install through npm, which provides it)');
  }

  const compiler = have('c++', ['--version']) || have('g++', ['--version']) || have('clang++', ['--version']);
  const lines = [
    'the native addon could not be built, so the pure-TypeScript backend will be used.',
    ...failures.map((f) => `  - ${f}`),
    `  - toolchain: cmake ${cmake ? `found (${cmake})` : 'MISSING'}, C++17 compiler ${compiler ? `found (${compiler})` : 'MISSING'}`,
    'Fix: install cmake (>= 3.19) and a C++17 compiler (Debian/Ubuntu: apt-get install cmake g++; macOS: xcode-select',
    '     --install && brew install cmake), then run: npm rebuild divbind-native --build-from-source',
    "Everything still works with backend: 'js' (slower).",
  ];
  if (REQUIRED) {
    console.error(`divbind-native: ${lines.join('\n')}\nDIVBIND_REQUIRE_NATIVE=1: failing the install.`);
    return 1;
  }
  console.warn(`divbind-native: ${lines.join('\n')}`);
  return 0;

  function done() {
    log(`native addon ready: ${probe().detail}`);
    return 0;
  }
}

process.exitCode = main();
