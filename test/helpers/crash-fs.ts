/**
 * A fault-injecting file layer for crash tests (test-only). SIGKILL leaves the page cache intact, so a
 * job with no fsync at all passes every kill test; this layer simulates a power loss instead. Installed
 * in a child process, it patches node:fs/promises (FileHandle methods, rename, unlink, link, writeFile,
 * rm) and keeps a model of what is durable:
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
import {
  promises as fsp,
  readlinkSync,
  readdirSync,
  readFileSync,
  statSync,
  fstatSync,
  writeFileSync,
  unlinkSync,
  mkdirSync,
  chmodSync,
  existsSync,
} from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { dirname, join, resolve, sep } from 'node:path';

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

function installCrashFs(
  rootDir: string,
  crashAt: number,
  keep: KeepPolicy,
): CrashFs & { patchHandle: (proto: Record<string, (...a: unknown[]) => unknown>) => void } {
  const root = resolve(rootDir);
  const data = new Map<number, Durable>();
  const dirs = new Map<string, Map<string, number>>();
  /** Writes since the last fsync of each inode, as functions that apply them to a content. */
  const pending = new Map<number, PendingWrite[]>();
  let events = 0;
  let kinds = '';

  const under = (p: string): boolean => {
    const r = resolve(p);
    return r === root || r.startsWith(root + sep);
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

  function crash(): never {
    for (const [dir, entries] of dirs) {
      mkdirSync(dir, { recursive: true });
      for (const name of readdirSync(dir)) {
        const st = statSync(join(dir, name), { throwIfNoEntry: false });
        if (st?.isFile() && !entries.has(name)) unlinkSync(join(dir, name));
      }
      for (const [name, ino] of entries) {
        const d = data.get(ino) ?? { content: Buffer.alloc(0), mode: 0o600 };
        const late = pending.get(ino) ?? [];
        const content = keep === 'last' && late.length > 0 ? late[late.length - 1](d.content) : d.content;
        writeFileSync(join(dir, name), content);
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
  const tracked = new WeakSet<object>();

  const origOpen = fsp.open;
  fsp.open = (async (path: Parameters<typeof fsp.open>[0], flags?: string | number, mode?: number) => {
    const p = String(path);
    // Every open (reads too) first snapshots the folder, so a file that existed before is known
    // with its content; only a file this open creates starts with nothing durable.
    if (under(p)) touchDir(dirname(resolve(p)));
    const existed = under(p) && existsSync(p);
    const fh = await origOpen(path, flags as string, mode);
    if (under(p)) {
      const st = fstatSync(fh.fd);
      if (st.isFile()) {
        tracked.add(fh);
        if (!data.has(st.ino)) data.set(st.ino, { content: existed ? readFileSync(fdPath(fh.fd)) : Buffer.alloc(0), mode: st.mode & 0o7777 });
      }
      if (st.isDirectory()) tracked.add(fh);
    }
    return fh;
  }) as typeof fsp.open;

  const patchHandle = (proto: Record<string, (...a: unknown[]) => unknown>): void => {
    for (const name of ['write', 'writev', 'writeFile', 'truncate'] as const) {
      const orig = proto[name];
      proto[name] = function (this: { fd: number }, ...args: unknown[]) {
        const rel = tracked.has(this);
        tick(rel, name === 'truncate' ? 't' : 'w');
        if (rel) {
          const op = describeWrite(name, args);
          if (op) {
            const ino = fstatSync(this.fd).ino;
            const list = pending.get(ino) ?? [];
            list.push(op);
            pending.set(ino, list);
          }
        }
        return orig.apply(this, args);
      };
    }
    for (const name of ['sync', 'datasync'] as const) {
      const orig = proto[name];
      proto[name] = async function (this: { fd: number }, ...args: unknown[]) {
        const rel = tracked.has(this);
        tick(rel, rel && fstatSync(this.fd).isDirectory() ? 'd' : 's');
        const r = await orig.apply(this, args);
        if (rel) {
          const st = fstatSync(this.fd);
          if (st.isFile()) {
            data.set(st.ino, { content: readFileSync(fdPath(this.fd)), mode: st.mode & 0o7777 });
            pending.delete(st.ino);
          } else if (st.isDirectory()) {
            const dir = resolve(readlinkFd(this.fd));
            dirs.set(dir, listing(dir));
          }
        }
        return r;
      };
    }
  };

  const origRename = fsp.rename;
  fsp.rename = (async (from: string, to: string) => {
    const rel = under(String(from)) || under(String(to));
    if (rel) {
      touchDir(dirname(resolve(String(from))));
      touchDir(dirname(resolve(String(to))));
    }
    tick(rel, 'r');
    return origRename(from, to);
  }) as typeof fsp.rename;
  const origUnlink = fsp.unlink;
  fsp.unlink = (async (p: string) => {
    const rel = under(String(p));
    if (rel) touchDir(dirname(resolve(String(p))));
    tick(rel, 'u');
    return origUnlink(p);
  }) as typeof fsp.unlink;
  const origLink = fsp.link;
  fsp.link = (async (a: string, b: string) => {
    const rel = under(String(b));
    if (rel) touchDir(dirname(resolve(String(b))));
    tick(rel, 'l');
    return origLink(a, b);
  }) as typeof fsp.link;
  const origWriteFile = fsp.writeFile;
  fsp.writeFile = (async (p: Parameters<typeof fsp.writeFile>[0], d: Parameters<typeof fsp.writeFile>[1], o?: Parameters<typeof fsp.writeFile>[2]) => {
    const rel = typeof p === 'string' && under(p);
    if (rel) touchDir(dirname(resolve(p)));
    tick(rel, 'f');
    const r = await origWriteFile(p, d, o);
    if (rel) {
      const st = statSync(p);
      const flushed = typeof o === 'object' && o !== null && (o as { flush?: boolean }).flush === true;
      // Without flush the content is not durable; a file created here has nothing durable yet.
      if (flushed) data.set(st.ino, { content: readFileSync(p), mode: st.mode & 0o7777 });
      else if (!data.has(st.ino)) data.set(st.ino, { content: Buffer.alloc(0), mode: st.mode & 0o7777 });
    }
    return r;
  }) as typeof fsp.writeFile;
  const origRm = fsp.rm;
  fsp.rm = (async (p: string, o?: Parameters<typeof fsp.rm>[1]) => {
    const rel = under(String(p));
    if (rel && existsSync(p) && statSync(p).isDirectory()) touchDir(p);
    if (rel) touchDir(dirname(resolve(String(p))));
    tick(rel, 'm');
    return origRm(p, o);
  }) as typeof fsp.rm;

  return {
    get events() {
      return events;
    },
    get kinds() {
      return kinds;
    },
    patchHandle,
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

/** The path a descriptor was opened with (as the kernel knows it now). */
function readlinkFd(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}

/** Install the layer: patches fs/promises and the FileHandle prototype; call before the job's modules run their I/O. */
export async function installCrashLayer(rootDir: string, crashAt: number, keep: KeepPolicy = 'none'): Promise<CrashFs> {
  const layer = installCrashFs(rootDir, crashAt, keep);
  const probe = await fsp.open(process.execPath, 'r');
  layer.patchHandle(Object.getPrototypeOf(probe));
  await probe.close();
  syncBuiltinESMExports();
  return layer;
}
