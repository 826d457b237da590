// Helpers of the serve tests: disks in a temp folder, a host on a socket there, and real clients
// (qemu-img, qemu-io, nbdinfo) run asynchronously so that the in-process server keeps serving.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createEncryptedDisk, openDisk, serve, type NbdHost, type ServeOptions } from '../../src/index.js';
import { phraseLocker } from '../disk/helpers.js';

export const PASSPHRASE = 'serve-test-passphrase';
export const KEYS = { passphrase: PASSPHRASE };

/** The plaintext of a disk, read through vmseal with KEYS (after the server released it). */
export async function plaintextOf(path: string): Promise<Buffer> {
  const d = await openDisk(path, { keys: KEYS, readOnly: true });
  try {
    return await d.read(0, d.capacity);
  } finally {
    await d.close();
  }
}

const execFileP = promisify(execFile);

/** Run a client program; resolves with its output, rejects with its stderr on failure. */
export async function run(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  const { stdout } = await execFileP(cmd, args, { timeout, maxBuffer: 64 << 20 });
  return stdout;
}

/** An encrypted disk holding `content` at offset 0 (the rest reads as zeros). */
export async function encryptedDisk(
  dir: string,
  name: string,
  opts: { subformat: 'monolithicFlat' | 'monolithicSparse'; capacity: number; unitSize?: 512 | 4096; content?: Buffer; at?: number },
): Promise<string> {
  const path = join(dir, `${name}.vmdk`);
  const d = await createEncryptedDisk(path, {
    capacity: opts.capacity,
    subformat: opts.subformat,
    lockers: [phraseLocker(PASSPHRASE)],
    ...(opts.unitSize ? { unitSize: opts.unitSize } : {}),
  });
  try {
    if (opts.content) await d.write(opts.at ?? 0, opts.content);
  } finally {
    await d.close();
  }
  return path;
}

export function plainRaw(dir: string, name: string, content: Buffer): string {
  const path = join(dir, `${name}.raw`);
  writeFileSync(path, content);
  return path;
}

export function random(n: number): Buffer {
  return randomBytes(n);
}

/** A host on a socket in `dir`, logging into `lines`. */
export async function startHost(
  dir: string,
  disks: ServeOptions['disks'],
  extra: Partial<ServeOptions> = {},
): Promise<{ host: NbdHost; socket: string; lines: string[] }> {
  const socket = join(dir, 'nbd.sock');
  const lines: string[] = [];
  const host = await serve({ disks, listen: { socket }, keys: KEYS, log: (l) => lines.push(l), ...extra });
  return { host, socket, lines };
}

export function unixUri(socket: string, name: string): string {
  return `nbd+unix:///${name}?socket=${socket}`;
}

/**
 * Awaits `job` while `writeNext(i)` writes block i through a client, one block in flight, every
 * 10 ms, until the job settles or `max` blocks are written: writes that race a live snapshot,
 * backup or commit. Returns the job's result and how many blocks were written.
 */
export async function whileWriting<T>(job: Promise<T>, writeNext: (index: number) => Promise<void>, max: number): Promise<{ result: T; blocks: number }> {
  let finished = false;
  void job.finally(() => (finished = true));
  let blocks = 0;
  while (!finished && blocks < max) {
    await writeNext(blocks);
    blocks++;
    await new Promise((r) => setTimeout(r, 10));
  }
  return { result: await job, blocks };
}
