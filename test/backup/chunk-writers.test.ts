// The chunk writer threads of `backup create` (src/backup/chunk-writers.ts): each job hashes a chunk
// and stores it as Repository.putChunk would — under its SHA-256, mode 0600, whole, once — in one
// message to a worker thread; an error of the file system comes back with its code.
import { randomFillSync } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRepository } from '../../src/backup/index.js';
import { openRepository, sha256Hex } from '../../src/backup/repository.js';
import { ChunkWriters } from '../../src/backup/chunk-writers.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-writers-');
});
afterAll(() => tmp.cleanup());

function chunkOf(bytes: number): { shared: SharedArrayBuffer; data: Buffer } {
  const shared = new SharedArrayBuffer(1 << 20);
  const data = Buffer.from(shared, 0, bytes);
  randomFillSync(data);
  return { shared, data };
}

/** Every file under the repository's chunk folders (names relative to chunks/). */
function chunkFiles(root: string): string[] {
  return readdirSync(root).flatMap((fan) => readdirSync(join(root, fan)).map((n) => `${fan}/${n}`));
}

describe('ChunkWriters', () => {
  it.each([2, 0])('stores a chunk once under its SHA-256 with mode 0600 and leaves no temp file (%i threads)', async (threads) => {
    const repo = await openRepository((await initRepository(join(tmp.dir, `r1-${threads}`))).path);
    const writers = new ChunkWriters(repo, threads);
    try {
      const { shared, data } = chunkOf(1 << 20);
      const first = await writers.store(shared, data.length);
      expect(first).toEqual({ hash: sha256Hex(data), wrote: true });
      expect(readFileSync(repo.chunkPath(first.hash))).toEqual(data);
      expect(statSync(repo.chunkPath(first.hash)).mode & 0o777).toBe(0o600);
      expect(await writers.store(shared, data.length)).toEqual({ hash: first.hash, wrote: false });
      // A short last chunk: only `length` bytes of the buffer are the chunk.
      const short = await writers.store(shared, 4096);
      expect(short.hash).toBe(sha256Hex(data.subarray(0, 4096)));
      expect(readFileSync(repo.chunkPath(short.hash))).toEqual(data.subarray(0, 4096));
      expect(chunkFiles(repo.chunkRoot).sort()).toEqual([first.hash, short.hash].map((h) => `${h.slice(0, 2)}/${h}`).sort());
    } finally {
      await writers.close();
    }
  });

  it('writes a chunk stored by many jobs at once exactly once, and many distinct chunks in parallel', async () => {
    const repo = await openRepository((await initRepository(join(tmp.dir, 'r2'))).path);
    const writers = new ChunkWriters(repo, 4);
    try {
      const same = chunkOf(65536);
      const copies = await Promise.all(Array.from({ length: 8 }, () => writers.store(same.shared, 65536)));
      expect(copies.filter((c) => c.wrote)).toHaveLength(1);
      expect(new Set(copies.map((c) => c.hash))).toEqual(new Set([sha256Hex(same.data)]));
      const distinct = Array.from({ length: 8 }, () => chunkOf(65536));
      const stored = await Promise.all(distinct.map((c) => writers.store(c.shared, 65536)));
      expect(stored.map((s) => s.hash)).toEqual(distinct.map((c) => sha256Hex(c.data)));
      expect(stored.every((s) => s.wrote)).toBe(true);
      for (const c of distinct) expect(readFileSync(repo.chunkPath(sha256Hex(c.data)))).toEqual(c.data);
      expect(chunkFiles(repo.chunkRoot).filter((n) => n.includes('.tmp-'))).toEqual([]);
    } finally {
      await writers.close();
    }
  });

  it('rejects with the file system error (its code kept) and goes on serving the next jobs', async () => {
    const repo = await openRepository((await initRepository(join(tmp.dir, 'r3'))).path);
    const writers = new ChunkWriters(repo, 2);
    try {
      const { shared, data } = chunkOf(8192);
      const hash = sha256Hex(data);
      rmSync(join(repo.chunkRoot, hash.slice(0, 2)), { recursive: true });
      await expect(writers.store(shared, data.length)).rejects.toMatchObject({ code: 'ENOENT' });
      let other = chunkOf(8192);
      while (sha256Hex(other.data).slice(0, 2) === hash.slice(0, 2)) other = chunkOf(8192);
      expect(await writers.store(other.shared, 8192)).toEqual({ hash: sha256Hex(other.data), wrote: true });
    } finally {
      await writers.close();
    }
  });
});
