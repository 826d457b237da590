/**
 * A fault-injecting file layer for crash tests (test-only). SIGKILL leaves the page cache intact, so a
 * job with no fsync at all passes every kill test; this layer simulates a power loss instead. Installed
 * in a child process, it patches every durability-relevant call (test/helpers/file-calls.ts:
 * FileHandle methods, rename, unlink, link, writeFile, rm, and their synchronous node:fs forms, which
 * vmseal uses on a memory-backed folder) and keeps a model of what is durable:
 *
 *   - the durable content of each file (by inode): its content when first seen, replaced by the
 *     current content at each completed fsync/fdatasync of a descriptor of that file;
 *   - the durable entries of each folder (name → inode): its listing when first seen, replaced by
 *     the current listing at each completed fsync of the folder.
 *
 * At the N-th durability-relevant call (a write, a sync, a truncate, a rename, an unlink, a link),
 * before it runs, the files under `root` are rewritten to their durable state — every write not
 * covered by a completed fsync of its file is lost, every rename/unlink/link/create not followed by an
 * fsync of its folder is undone — and the process kills itself with SIGKILL.
 *
 * `keep` chooses which un-synced writes survive: 'none' (all lost), or 'last' (only the last write
 * of each file reaches the disk: the device reordered it ahead of earlier ones). 'last' catches a
 * missing fsync between two writes of the same file, which a later fsync of that file would hide.
 */
import fs, { readdirSync, readFileSync, realpathSync, statSync, fstatSync, mkdirSync, chmodSync, existsSync } from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { interceptFileCalls, pathOfFd, type FileCall } from './file-calls.js';

interface Durable {
  content: Buffer;
  mode: number;
}

export interface CrashFs {
  /** Durability-relevant calls seen so far. */
  readonly events: number;
  /**
   * Their kinds, one letter a call in order: w write (write, writev, a handle's writeFile), t
   * truncate, s sync of a file, d sync of a folder, r rename, u unlink, l link, f writeFile, m rm.
   * test/helpers/points.ts visits the first and last call of each kind.
   */
  readonly kinds: string;
}

export type KeepPolicy = 'none' | 'last';
type PendingWrite = (content: Buffer) => Buffer;

async function installCrashFs(rootDir: string, crashAt: number, keep: KeepPolicy): Promise<CrashFs> {
  const root = resolve(rootDir);
  // Descriptors name their files by real path (/proc/self/fd): a root reached through a symlink is seen under both names.
  const realRoot = existsSync(root) ? realpathSync(root) : root;
  const data = new Map<number, Durable>();
  const dirs = new Map<string, Map<string, number>>();
  /** Writes since the last fsync of each inode, as functions that apply them to a content. */
  const pending = new Map<number, PendingWrite[]>();
  let events = 0;
  let kinds = '';

  const under = (p: string): boolean => {
    const r = resolve(p);
    return [root, realRoot].some((top) => r === top || r.startsWith(top + sep));
  };

  /** Regular files of a folder, name → inode (content snapshotted for inodes not yet known). */
  function listing(dir: string): Map<string, number> {
    const m = new Map<string, number>();
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      return m;
    }
    for (const name of names) {
      const st = statSync(join(dir, name), { throwIfNoEntry: false });
      if (!st || !st.isFile()) continue;
      m.set(name, st.ino);
      if (!data.has(st.ino)) data.set(st.ino, { content: readFileSync(join(dir, name)), mode: st.mode & 0o7777 });
    }
    return m;
  }

  function touchDir(dir: string): void {
    const d = resolve(dir);
    if (!under(d) || dirs.has(d)) return;
    dirs.set(d, listing(d));
  }

  /** The calls that write files; set once the calls are intercepted (the layer's own writes are not counted). */
  let raw: Pick<typeof fs, 'writeFileSync' | 'unlinkSync'> = fs;

  function crash(): never {
    for (const [dir, entries] of dirs) {
      mkdirSync(dir, { recursive: true });
      for (const name of readdirSync(dir)) {
        const st = statSync(join(dir, name), { throwIfNoEntry: false });
        if (st?.isFile() && !entries.has(name)) raw.unlinkSync(join(dir, name));
      }
      for (const [name, ino] of entries) {
        const d = data.get(ino) ?? { content: Buffer.alloc(0), mode: 0o600 };
        const late = pending.get(ino) ?? [];
        const content = keep === 'last' && late.length > 0 ? late[late.length - 1](d.content) : d.content;
        raw.writeFileSync(join(dir, name), content);
        chmodSync(join(dir, name), d.mode);
      }
    }
    process.kill(process.pid, 'SIGKILL');
    throw new Error('unreachable');
  }

  function tick(relevant: boolean, kind: string): void {
    if (!relevant) return;
    events++;
    kinds += kind;
    if (crashAt > 0 && events >= crashAt) crash();
  }

  const fdPath = (fd: number): string => `/proc/self/fd/${fd}`;
  /** FileHandles of files and folders under the root (opened through fs/promises). */
  const tracked = new WeakSet<object>();

  /** A file opened under the root: known from now on, with its content if it existed before this open. */
  const opened = (fd: number, existed: boolean): boolean => {
    const st = fstatSync(fd);
    if (st.isFile() && !data.has(st.ino)) data.set(st.ino, { content: existed ? readFileSync(fdPath(fd)) : Buffer.alloc(0), mode: st.mode & 0o7777 });
    return st.isFile() || st.isDirectory();
  };

  /** Whether a handle call is on a file or folder under the root (a bare descriptor: by the path it names now). */
  const modelled = (call: Extract<FileCall, { on: 'handle' }>): boolean =>
    call.handle !== undefined ? tracked.has(call.handle) : under(pathOfFd(call.fd).replace(/ \(deleted\)$/, ''));

  raw = await interceptFileCalls({
    // Every open (reads too) first snapshots the folder, so a file that existed before is known
    // with its content; only a file this open creates starts with nothing durable.
    open(path) {
      if (!under(path)) return undefined;
      touchDir(dirname(resolve(path)));
      const existed = existsSync(path);
      return (fd, handle) => {
        if (opened(fd, existed) && handle) tracked.add(handle);
      };
    },
    before(call) {
      if (call.on === 'handle') {
        const rel = modelled(call);
        if (call.name === 'sync' || call.name === 'datasync') {
          tick(rel, rel && fstatSync(call.fd).isDirectory() ? 'd' : 's');
          return;
        }
        tick(rel, call.name === 'truncate' ? 't' : 'w');
        const op = rel ? describeWrite(call.name, call.args) : null;
        if (op) {
          const ino = fstatSync(call.fd).ino;
          const list = pending.get(ino) ?? [];
          list.push(op);
          pending.set(ino, list);
        }
        return;
      }
      const [first, second] = call.paths;
      if (call.name === 'rename') {
        const rel = under(first) || under(second);
        if (rel) {
          touchDir(dirname(resolve(first)));
          touchDir(dirname(resolve(second)));
        }
        tick(rel, 'r');
      } else if (call.name === 'link') {
        const rel = under(second);
        if (rel) touchDir(dirname(resolve(second)));
        tick(rel, 'l');
      } else if (call.name === 'unlink') {
        const rel = under(first);
        if (rel) touchDir(dirname(resolve(first)));
        tick(rel, 'u');
      } else if (call.name === 'writeFile') {
        const rel = typeof call.args[0] === 'string' && under(first);
        if (rel) touchDir(dirname(resolve(first)));
        tick(rel, 'f');
      } else {
        const rel = under(first);
        if (rel && existsSync(first) && statSync(first).isDirectory()) touchDir(first);
        if (rel) touchDir(dirname(resolve(first)));
        tick(rel, 'm');
      }
    },
    after(call) {
      if (call.on === 'handle') {
        if ((call.name !== 'sync' && call.name !== 'datasync') || !modelled(call)) return;
        const st = fstatSync(call.fd);
        if (st.isFile()) {
          data.set(st.ino, { content: readFileSync(fdPath(call.fd)), mode: st.mode & 0o7777 });
          pending.delete(st.ino);
        } else if (st.isDirectory()) {
          const dir = resolve(pathOfFd(call.fd));
          dirs.set(dir, listing(dir));
        }
        return;
      }
      if (call.name !== 'writeFile' || typeof call.args[0] !== 'string' || !under(call.args[0])) return;
      const p = call.args[0];
      const st = statSync(p);
      const o = call.args[2];
      const flushed = typeof o === 'object' && o !== null && (o as { flush?: boolean }).flush === true;
      // Without flush the content is not durable; a file created here has nothing durable yet.
      if (flushed) data.set(st.ino, { content: readFileSync(p), mode: st.mode & 0o7777 });
      else if (!data.has(st.ino)) data.set(st.ino, { content: Buffer.alloc(0), mode: st.mode & 0o7777 });
    },
  });

  return {
    get events() {
      return events;
    },
    get kinds() {
      return kinds;
    },
  };
}

/** A FileHandle write as a function over the file's content (null: a form this layer does not model). Data is copied now: callers reuse buffers. */
function describeWrite(name: string, args: unknown[]): PendingWrite | null {
  const put =
    (bytes: Buffer, pos: number) =>
    (content: Buffer): Buffer => {
      const out = Buffer.alloc(Math.max(content.length, pos + bytes.length));
      content.copy(out);
      bytes.copy(out, pos);
      return out;
    };
  const copyOf = (v: Uint8Array, off = 0, len = v.byteLength - off): Buffer => Buffer.from(v.subarray(off, off + len));
  if (name === 'write' && ArrayBuffer.isView(args[0])) {
    const view = args[0] as Uint8Array;
    const off = typeof args[1] === 'number' ? args[1] : 0;
    const len = typeof args[2] === 'number' ? args[2] : view.byteLength - off;
    if (typeof args[3] !== 'number') return null;
    return put(copyOf(view, off, len), args[3]);
  }
  if (name === 'writev' && Array.isArray(args[0]) && typeof args[1] === 'number') {
    return put(Buffer.concat((args[0] as Uint8Array[]).map((b) => copyOf(b))), args[1]);
  }
  if (name === 'writeFile') {
    const d = args[0];
    const bytes = typeof d === 'string' ? Buffer.from(d) : ArrayBuffer.isView(d) ? copyOf(d as Uint8Array) : null;
    return bytes ? () => Buffer.from(bytes) : null;
  }
  if (name === 'truncate') {
    const len = typeof args[0] === 'number' ? args[0] : 0;
    return (content) => {
      const out = Buffer.alloc(len);
      content.copy(out, 0, 0, Math.min(len, content.length));
      return out;
    };
  }
  return null;
}

/**
 * Install the layer: patches fs/promises, the FileHandle prototype and the synchronous node:fs calls
 * (file-calls.ts); call before the job's modules run their I/O.
 */
export async function installCrashLayer(rootDir: string, crashAt: number, keep: KeepPolicy = 'none'): Promise<CrashFs> {
  return installCrashFs(rootDir, crashAt, keep);
}
