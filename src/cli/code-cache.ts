/**
 * Run a CommonJS script with a V8 code cache kept beside it (docs/performance.md, "CLI start-up").
 * Node 20 compiles the CLI's 1.3 MB bundle at every start; with V8's cached data for it, the
 * compiler is skipped for the script and for every function the cache holds. Node 20 has no
 * `module.enableCompileCache` (22.1), so the script is compiled here through `vm.Script` with
 * `cachedData`, in the same wrapper and with the same arguments Node's CommonJS loader gives it.
 *
 * The cache file holds code only, never data of a run (no key, path or argument): V8 serialises
 * the compiled functions of the script's source. Format: one header line
 * `vmseal-code-cache 1 <size> <mtimeMs> <ino>\n` naming the script file it was made from, then V8's
 * bytes. V8 itself rejects data made by another V8 version or with other flags, but checks the
 * source's length only, not its text: the header makes a rebuilt script of the same length miss
 * the cache instead of running another build's code.
 *
 * One cache per command (`main.js.<command>.cache`, `main.js.vmseal.cache` for `--version`,
 * `--help` and the like): a cache holds the functions its run compiled, and V8 deserialises all of
 * it, so `--version` must not load the encrypt path's code, nor `encrypt` miss it because `info`
 * ran first. A missing, stale or rejected cache is (re)written when a run exits with code 0 (a typo
 * or a file name in the command's place ends in a usage error: no file is made for it); where the
 * folder is not writable (a read-only install) nothing is written and the CLI runs as without a
 * cache. Nothing of this may fail a command: every error here is ignored.
 */
import { existsSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { createRequire, Module } from 'node:module';
import { dirname, join } from 'node:path';
import { Script } from 'node:vm';

import { isBatchCommandLine } from './v8-tiering.js';

// A batch runs V8 with other flags, set by bin/vmseal.js before compiling: its cache is its own.
// bin/vmseal.js also starts a batch's worker threads early (src/cli/batch-worker-start.ts).
export { isBatchCommandLine, useBatchTiering } from './v8-tiering.js';

const MAGIC = 'vmseal-code-cache 1';

/** What the header says of the script: its size, modification time and inode. */
export function cacheKey(file: string): string {
  const st = statSync(file);
  return `${MAGIC} ${st.size} ${st.mtimeMs} ${st.ino}`;
}

/** V8's data in `cacheFile` if its header names `key`, else undefined (missing, stale or unreadable). */
export function readCache(cacheFile: string, key: string): Buffer | undefined {
  let bytes: Buffer;
  try {
    bytes = readFileSync(cacheFile);
  } catch {
    return undefined;
  }
  const header = Buffer.from(`${key}\n`);
  if (bytes.length <= header.length || !bytes.subarray(0, header.length).equals(header)) return undefined;
  return bytes.subarray(header.length);
}

/**
 * Replace `cacheFile` by a temp file renamed over it: a reader sees the old cache or the new one,
 * never half of one. Not util/atomic-file.ts: a cache needs no fsync (a torn or lost file is a miss),
 * and that module loads node:crypto, which `vmseal --version` would then pay for at every start.
 * `writer` names the temp file: the process id, and the thread's too where several threads of one
 * process may write the same cache (a batch's workers).
 */
export function writeCache(cacheFile: string, key: string, data: Buffer, writer = String(process.pid)): void {
  const tmp = `${cacheFile}.tmp-${writer}`;
  try {
    writeFileSync(tmp, Buffer.concat([Buffer.from(`${key}\n`), data]), { flag: 'wx', mode: 0o644 });
    renameSync(tmp, cacheFile);
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // nothing was created (read-only folder), or it is already gone
    }
  }
}

/**
 * Whether scripts run with their code cache: not when source maps are on (VMSEAL_DEBUG=1 or
 * `node --enable-source-maps`: a script compiled through vm.Script gets no source map, and a debug
 * run wants stack traces that name src/*.ts) nor with VMSEAL_NO_CODE_CACHE=1.
 */
export function codeCacheWanted(): boolean {
  return !process.sourceMapsEnabled && process.env.VMSEAL_NO_CODE_CACHE !== '1';
}

/**
 * The source of a worker thread that runs the build's CommonJS script `file` with its code cache
 * (`<file>.cache`, made by the first worker that exits with code 0, as a command's is), for
 * `new Worker(source, { eval: true })`; undefined when the cache is not wanted or this module's
 * build (code-cache.js) is not beside `file`: the worker then runs `file` itself. Decided on the
 * starting thread, whose environment a worker does not get in full.
 */
export function workerSourceWithCodeCache(file: string): string | undefined {
  const loader = join(dirname(file), 'code-cache.js');
  if (!codeCacheWanted() || !existsSync(loader)) return undefined;
  return [
    "const { threadId } = require('node:worker_threads');",
    `require(${JSON.stringify(loader)}).runWithCodeCache(${JSON.stringify(file)}, ${JSON.stringify(`${file}.cache`)}, \`\${process.pid}-\${threadId}\`);`,
  ].join('\n');
}

/** How a script was loaded: whether V8 took the cache (for tests and VMSEAL_DEBUG). */
export type CacheUse = 'used' | 'rejected' | 'missing';

/**
 * The cache file of a run with arguments `argv`: `<file>.<command>.cache`, the command being the
 * first argument that is not an option and looks like a command name ("vmseal" when there is none);
 * `convert-batch` for a batch, which runs under other V8 flags (src/cli/v8-tiering.ts).
 */
export function cacheFileFor(file: string, argv: readonly string[], isBatch: (argv: readonly string[]) => boolean = isBatchCommandLine): string {
  const word = argv.find((a) => !a.startsWith('-'));
  const command = word === undefined ? 'vmseal' : /^[a-z][a-z0-9-]{0,31}$/.test(word) ? word : 'other';
  return `${file}.${command === 'convert' && isBatch(argv) ? 'convert-batch' : command}.cache`;
}

/**
 * Load `file` as Node's CommonJS loader would (module, exports, require, __filename, __dirname),
 * compiled with the code cache in `cacheFile` (default: cacheFileFor this process's arguments);
 * `writer` as for writeCache.
 */
export function runWithCodeCache(file: string, cacheFile = cacheFileFor(file, process.argv.slice(2)), writer = String(process.pid)): CacheUse {
  const source = readFileSync(file, 'utf8');
  let key: string | undefined;
  let cached: Buffer | undefined;
  try {
    key = cacheKey(file);
    cached = readCache(cacheFile, key);
  } catch {
    // no key, no cache: compile as Node would
  }
  const script = new Script(Module.wrap(source), { filename: file, ...(cached ? { cachedData: cached } : {}) });
  const use: CacheUse = cached === undefined ? 'missing' : script.cachedDataRejected ? 'rejected' : 'used';
  if (use !== 'used' && key !== undefined) {
    const made = key;
    // At exit the functions the run called are compiled: the cache then holds them too.
    process.once('exit', (code) => {
      if (code !== 0) return;
      try {
        writeCache(cacheFile, made, script.createCachedData(), writer);
      } catch {
        // the cache is an optimisation only
      }
    });
  }
  const mod = new Module(file);
  mod.filename = file;
  mod.paths = (Module as unknown as { _nodeModulePaths(dir: string): string[] })._nodeModulePaths(dirname(file));
  const wrapper = script.runInThisContext({ displayErrors: true }) as (...args: unknown[]) => void;
  wrapper.call(mod.exports, mod.exports, createRequire(file), mod, file, dirname(file));
  mod.loaded = true;
  return use;
}
