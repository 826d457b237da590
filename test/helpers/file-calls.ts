/**
 * The durability-relevant file calls of a test's child process, whichever API makes them: the one
 * place that says which calls they are, for the fault-injecting layer (crash-fs.ts) and the kill
 * counters of the crash fixtures (kill-switch.ts, test/pipeline/fixtures/child-hooks.ts …).
 *
 * vmseal makes each step of a job through one of two APIs, chosen by the file system: fs/promises
 * (FileHandle methods, rename, link …) on a disk, and the synchronous node:fs calls on a
 * memory-backed folder, where small writes and folder metadata run inline (src/util/inline-io.ts,
 * src/util/inline-fs.ts, fsyncDirSync). A test whose TMPDIR is a tmpfs (/dev/shm) takes the second
 * path: a layer that saw only fs/promises then counted a fraction of the calls, killed a job at
 * another step than on a disk or not at all, and never lost an inline write at a power loss. So
 * each synchronous call is reported as the fs/promises call it stands for (writeSync as a handle's
 * `write`, fsyncSync as its `sync`, renameSync as `rename` …): a job's calls are the same list on
 * both, and its crash points the same steps.
 *
 * Lock records (`*.vmseal-lock`, src/util/lock.ts and name-lock.ts) are left out: they are written
 * and removed with synchronous calls on every file system, never synced, no step of a job (a lock
 * dies with its process), and counting them would renumber every crash point. So are synchronous
 * calls on a descriptor that is no regular file or folder, or a standard stream (console output).
 *
 * Not seen: calls of worker threads (their node:fs is their own) and of the native addon.
 */
import fs, { fstatSync, promises as fsp, readlinkSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

/** A FileHandle method (or its synchronous counterpart on a descriptor) that writes or syncs. */
export type HandleCallName = 'write' | 'writev' | 'writeFile' | 'truncate' | 'sync' | 'datasync';
/** An fs/promises function (or its synchronous counterpart) that changes a folder or writes a file by path. */
export type PathCallName = 'rename' | 'link' | 'unlink' | 'writeFile' | 'rm';

export type FileCall =
  | {
      on: 'handle';
      name: HandleCallName;
      fd: number;
      /** The FileHandle; undefined for a synchronous call on a bare descriptor. */
      handle: object | undefined;
      /** The arguments after the descriptor, as the FileHandle method takes them (see handleArgs). */
      args: unknown[];
    }
  | {
      on: 'path';
      name: PathCallName;
      /** The path arguments: [from, to] for rename and link, [path] otherwise. */
      paths: string[];
      args: unknown[];
    };

export interface FileCallHooks {
  /** Before the call runs (it may kill the process). */
  before(call: FileCall): void;
  /** Once the call has completed without an error. */
  after?(call: FileCall): void;
  /**
   * Before a file or folder is opened (fs/promises open, openSync): may return what to run once it
   * is open, with its descriptor and its FileHandle (undefined for openSync).
   */
  open?(path: string): ((fd: number, handle: object | undefined) => void) | undefined;
}

const LOCK_RECORD = '.vmseal-lock';

/** The path a descriptor names now (the kernel's view), '' when it cannot be read. */
export function pathOfFd(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

/** Lock records, and a bare descriptor's call that is no file's: a standard stream (console output), a pipe, a socket. */
function ignored(call: FileCall): boolean {
  if (call.on === 'path') return call.paths.some((p) => p.endsWith(LOCK_RECORD));
  if (call.handle !== undefined) return false;
  if (call.fd <= 2) return true;
  try {
    const st = fstatSync(call.fd);
    if (!st.isFile() && !st.isDirectory()) return true;
  } catch {
    return true; // a bad descriptor: the call itself fails, and changes nothing
  }
  return pathOfFd(call.fd).endsWith(LOCK_RECORD);
}

/**
 * A synchronous descriptor call's arguments in the form of the FileHandle method it stands for:
 * writeSync(fd, string, position) is write(string, position); writeSync(fd, buffer, offset,
 * length, position) is write(buffer, offset, length, position) — the same shapes, so the
 * descriptor is simply dropped.
 */
function handleArgs(args: unknown[]): unknown[] {
  return args.slice(1);
}

/** A path call's paths: [from, to] for rename and link, [path] otherwise. */
function pathsOf(name: PathCallName, args: unknown[]): string[] {
  return name === 'rename' || name === 'link' ? [String(args[0]), String(args[1])] : [String(args[0])];
}

/**
 * Patch every durability-relevant call of this process — FileHandle methods, fs/promises functions
 * and the synchronous node:fs calls — to run `hooks` around it. Call before the code under test is
 * imported (it must be imported dynamically afterwards, so that its fs bindings are the patched ones).
 * Returns the unpatched synchronous calls, for a layer that must write without being counted.
 */
export async function interceptFileCalls(hooks: FileCallHooks): Promise<Pick<typeof fs, 'writeFileSync' | 'unlinkSync'>> {
  const original = { writeFileSync: fs.writeFileSync, unlinkSync: fs.unlinkSync };
  // Node's own synchronous calls go through the patched ones (writeFileSync opens and writes with
  // fs.openSync and fs.writeSync), and so do the hooks' reads: only the outermost call is one.
  let depth = 0;
  const unhooked = <T>(run: () => T): T => {
    depth++;
    try {
      return run();
    } finally {
      depth--;
    }
  };
  const around = <T>(call: FileCall, run: () => T): T => {
    if (depth > 0 || ignored(call)) return run();
    const result = unhooked(() => {
      hooks.before(call);
      return run();
    });
    if (result instanceof Promise) {
      return result.then((value: unknown) => {
        unhooked(() => hooks.after?.(call));
        return value;
      }) as T;
    }
    unhooked(() => hooks.after?.(call));
    return result;
  };

  const probe = await fsp.open(process.execPath, 'r');
  const proto = Object.getPrototypeOf(probe) as Record<string, (...a: unknown[]) => unknown>;
  await probe.close();
  for (const name of ['write', 'writev', 'writeFile', 'truncate', 'sync', 'datasync'] as const) {
    const orig = proto[name]!;
    proto[name] = function (this: { fd: number }, ...args: unknown[]) {
      return around({ on: 'handle', name, fd: this.fd, handle: this, args }, () => orig.apply(this, args));
    };
  }
  for (const name of ['rename', 'link', 'unlink', 'writeFile', 'rm'] as const) {
    const orig = fsp[name] as (...a: unknown[]) => Promise<unknown>;
    (fsp as Record<string, unknown>)[name] = (...args: unknown[]) => around({ on: 'path', name, paths: pathsOf(name, args), args }, () => orig(...args));
  }

  if (hooks.open) {
    const origOpen = fsp.open;
    fsp.open = (async (...args: Parameters<typeof fsp.open>) => {
      const opened = depth > 0 ? undefined : unhooked(() => hooks.open!(String(args[0])));
      const fh = await origOpen(...args);
      if (opened) unhooked(() => opened(fh.fd, fh));
      return fh;
    }) as typeof fsp.open;
  }

  const sync = fs as unknown as Record<string, (...a: unknown[]) => unknown>;
  if (hooks.open) {
    const origOpenSync = sync.openSync!;
    sync.openSync = (...args: unknown[]) => {
      const opened = depth > 0 ? undefined : unhooked(() => hooks.open!(String(args[0])));
      const fd = origOpenSync(...args) as number;
      if (opened) unhooked(() => opened(fd, undefined));
      return fd;
    };
  }
  const onFd = (syncName: string, name: HandleCallName): void => {
    const orig = sync[syncName]!;
    sync[syncName] = (...args: unknown[]) =>
      around({ on: 'handle', name, fd: args[0] as number, handle: undefined, args: handleArgs(args) }, () => orig(...args));
  };
  onFd('writeSync', 'write');
  onFd('writevSync', 'writev');
  onFd('ftruncateSync', 'truncate');
  onFd('fsyncSync', 'sync');
  onFd('fdatasyncSync', 'datasync');
  for (const [syncName, name] of [
    ['renameSync', 'rename'],
    ['linkSync', 'link'],
    ['unlinkSync', 'unlink'],
    ['rmSync', 'rm'],
  ] as const) {
    const orig = sync[syncName]!;
    sync[syncName] = (...args: unknown[]) => around({ on: 'path', name, paths: pathsOf(name, args), args }, () => orig(...args));
  }
  // writeFileSync takes a path or a descriptor: the path form is fs/promises writeFile's, the descriptor form a handle's.
  const origWriteFileSync = fs.writeFileSync;
  sync.writeFileSync = (...args: unknown[]) => {
    const call: FileCall =
      typeof args[0] === 'number'
        ? { on: 'handle', name: 'writeFile', fd: args[0], handle: undefined, args: handleArgs(args) }
        : { on: 'path', name: 'writeFile', paths: [String(args[0])], args };
    return around(call, () => (origWriteFileSync as (...a: unknown[]) => unknown)(...args));
  };
  syncBuiltinESMExports();
  return original;
}
