// vmseal's disk locks and qemu's image locks (OFD read locks on bytes 100+i "uses permission i" and
// 200+i "does not share permission i" of the image file) see each other, in both orders.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireLock } from '../../src/pipeline/lock.js';

const hasQemu = spawnSync('qemu-io', ['--version']).status === 0 && spawnSync('qemu-img', ['--version']).status === 0;
let dir: string;
let n = 0;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-qemu-lock-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function newDisk(): string {
  const disk = join(dir, `disk-${n++}.vmdk`);
  const r = spawnSync('qemu-img', ['create', '-f', 'vmdk', disk, '1M'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return disk;
}

function qemuWrite(disk: string) {
  return spawnSync('qemu-io', ['-c', 'write 0 512', disk], { encoding: 'utf8' });
}

/** qemu-io kept open on `disk` (interactive, fed from a pipe), once it has written a sector. */
function openQemuIo(disk: string): Promise<ChildProcessWithoutNullStreams> {
  const proc = spawn('qemu-io', [disk]);
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      if (out.includes('wrote 512/512')) resolve(proc);
    });
    proc.stderr.on('data', (d) => (out += d));
    proc.on('exit', (code) => reject(new Error(`qemu-io exited (${code}): ${out}`)));
    proc.stdin.write('write 0 512\n');
  });
}

function closeQemuIo(proc: ChildProcessWithoutNullStreams): Promise<void> {
  return new Promise((resolve) => {
    proc.removeAllListeners('exit');
    proc.on('exit', () => resolve());
    proc.stdin.end('quit\n');
  });
}

describe.skipIf(!hasQemu)('disk locks and qemu', () => {
  it('vmseal holding a disk exclusively makes qemu-io refuse to write it', async () => {
    const disk = newDisk();
    const lock = await acquireLock(disk, 'encrypt', 'exclusive');
    try {
      const r = qemuWrite(disk);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/Failed to get .* lock/);
      // qemu-img info needs a consistent read, which a writer does not share
      expect(spawnSync('qemu-img', ['info', disk]).status).not.toBe(0);
    } finally {
      await lock.release();
    }
    expect(qemuWrite(disk).status).toBe(0);
  });

  it('qemu-io writing a disk makes vmseal refuse it (exclusive and shared) with ERR_QEMU_LOCKED', async () => {
    const disk = newDisk();
    const qemu = await openQemuIo(disk);
    try {
      await expect(acquireLock(disk, 'encrypt', 'exclusive')).rejects.toMatchObject({ code: 'ERR_QEMU_LOCKED', message: expect.stringContaining('qemu') });
      await expect(acquireLock(disk, 'decrypt', 'shared')).rejects.toMatchObject({ code: 'ERR_QEMU_LOCKED' });
    } finally {
      await closeQemuIo(qemu);
    }
    // a refused attempt leaves nothing held
    const lock = await acquireLock(disk, 'encrypt', 'exclusive');
    await lock.release();
  });

  it('qemu-img info works while vmseal holds a shared lock; qemu-io writes do not', async () => {
    const disk = newDisk();
    const a = await acquireLock(disk, 'decrypt', 'shared');
    const b = await acquireLock(disk, 'inspect', 'shared'); // two readers at once
    try {
      const info = spawnSync('qemu-img', ['info', disk], { encoding: 'utf8' });
      expect(info.stderr).toBe('');
      expect(info.status).toBe(0);
      expect(qemuWrite(disk).status).not.toBe(0);
      await expect(acquireLock(disk, 'encrypt', 'exclusive')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
    } finally {
      await a.release();
      await b.release();
    }
    expect(qemuWrite(disk).status).toBe(0);
  });
});
