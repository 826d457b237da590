// The in-place journal is authenticated (version 2): anyone who can write the disk's folder can write
// a journal, and resume (often run as root) acts on it. A changed journal, a journal naming an extent
// outside the disk's folder, and a version-1 journal that does not match the disk are refused.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync, existsSync, appendFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { resumeDisk } from '../../src/pipeline/index.js';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { diskTemplate, plainHash } from './helpers.js';

const KiB = 1024;
const CHUNK = 64 * KiB;
const HEADER_AREA = 65536;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let image: Buffer;
let copyDisk: (to: string) => string;

beforeAll(async () => {
  tmp = tempDir('vmseal-jauth-');
  child = await bundleFixture(new URL('./fixtures/inplace-child.ts', import.meta.url));
  image = patternBytes(1024 * KiB, 41);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
  copyDisk = await diskTemplate(join(tmp.dir, 'orig'), join(tmp.dir, 'plain.raw'), 'encrypt', 'monolithicFlat', 'd.vmdk');
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

/** How many of this process's file descriptors are open on `path` (a refused journal must leave none). */
function openDescriptorsOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) n++;
    } catch {
      // closed while we looked (the listing's own descriptor)
    }
  }
  return n;
}

/** A copy of the plain disk whose in-place encryption was killed half way: its journal is left. */
function interrupted(name: string): string {
  const disk = copyDisk(name);
  const r = spawnSync(process.execPath, [child, 'encrypt', disk, String(CHUNK)], { env: { ...process.env, KILL_AT: '30' }, encoding: 'utf8' });
  expect(r.signal, r.stderr).toBe('SIGKILL');
  expect(existsSync(`${disk}.vmseal-journal`)).toBe(true);
  return disk;
}

interface Parsed {
  buf: Buffer;
  header: Record<string, unknown> & { descriptor: { during: string; final: string } };
}
function readJournal(disk: string): Parsed {
  const buf = readFileSync(`${disk}.vmseal-journal`);
  const n = buf.readUInt32LE(8);
  return { buf, header: JSON.parse(buf.subarray(12, 12 + n).toString('utf8')) };
}
/** Write the journal back as version 1 with `header`: magic VMSJRNL1, SHA-256 in place of every MAC (what anyone can compute). */
function writeV1(disk: string, p: Parsed, header: Parsed['header']): void {
  const json = Buffer.from(JSON.stringify({ ...header, version: 1 }), 'utf8');
  const out = Buffer.from(p.buf);
  out.fill(0, 0, HEADER_AREA);
  out.write('VMSJRNL1', 0, 'ascii');
  out.writeUInt32LE(json.length, 8);
  json.copy(out, 12);
  createHash('sha256')
    .update(json)
    .digest()
    .copy(out, 12 + json.length);
  for (const slot of [HEADER_AREA, HEADER_AREA + 512]) {
    if (out.subarray(slot, slot + 8).toString('ascii') !== 'VMSJSTAT') continue;
    createHash('sha256')
      .update(out.subarray(slot, slot + 68))
      .digest()
      .copy(out, slot + 68);
  }
  writeFileSync(`${disk}.vmseal-journal`, out);
}
const errorOf = (p: Promise<unknown>) =>
  p.then(
    () => null,
    (e: Error & { code?: string }) => e,
  );

describe('journal authentication (version 2)', () => {
  it('an untouched journal resumes', async () => {
    const disk = interrupted('ok');
    expect(readFileSync(`${disk}.vmseal-journal`).subarray(0, 8).toString('ascii')).toBe('VMSJRNL2');
    await resumeDisk(disk, { keys: { passphrase: 'pw' } });
    expect(await plainHash(disk, 'pw')).toBe(sha256(image));
  });

  it('a journal whose header was changed is refused before anything is written', async () => {
    const disk = interrupted('changed');
    const p = readJournal(disk);
    const forged = { ...p.header, started: '2000-01-01T00:00:00.000Z' };
    const json = Buffer.from(JSON.stringify(forged), 'utf8');
    const out = Buffer.from(p.buf);
    out.writeUInt32LE(json.length, 8);
    json.copy(out, 12);
    // The old MAC stays: a forger without the DEK cannot make a new one.
    p.buf.subarray(12 + p.buf.readUInt32LE(8), 12 + p.buf.readUInt32LE(8) + 32).copy(out, 12 + json.length);
    writeFileSync(`${disk}.vmseal-journal`, out);
    const before = readFileSync(disk);
    const err = await errorOf(resumeDisk(disk, { keys: { passphrase: 'pw' } }));
    expect(err?.code).toBe('ERR_JOURNAL');
    expect(err?.message).toMatch(/authentication/);
    expect(readFileSync(disk).equals(before), 'the descriptor is untouched').toBe(true);
    // The refused journal's file is closed (and its key wiped), not left to the garbage collector.
    expect(openDescriptorsOn(`${disk}.vmseal-journal`)).toBe(0);
  });

  it('a forged version-1 journal naming an extent outside the folder is refused', async () => {
    const disk = interrupted('extent');
    const p = readJournal(disk);
    const evil = join(tmp.dir, 'victim-file');
    writeFileSync(evil, 'do not touch\n');
    const final = Buffer.from(p.header.descriptor.final, 'base64')
      .toString('latin1')
      .replace(/"d-flat\.vmdk"/, JSON.stringify(evil));
    const during = Buffer.from(p.header.descriptor.during, 'base64')
      .toString('latin1')
      .replace(/"d-flat\.vmdk"/, JSON.stringify(evil));
    writeV1(disk, p, {
      ...p.header,
      descriptor: { during: Buffer.from(during, 'latin1').toString('base64'), final: Buffer.from(final, 'latin1').toString('base64') },
    });
    const err = await errorOf(resumeDisk(disk, { keys: { passphrase: 'pw' }, trustV1Journal: true }));
    expect(err?.code).toBe('ERR_JOURNAL');
    expect(err?.message).toMatch(/not a plain file name/);
    expect(readFileSync(evil, 'utf8')).toBe('do not touch\n');
    expect(readFileSync(disk, 'utf8')).not.toContain(evil);
  });
});

describe('version-1 journals', () => {
  it('resume when the disk descriptor is the one the journal wrote', async () => {
    const disk = interrupted('v1-ok');
    const p = readJournal(disk);
    writeV1(disk, p, p.header);
    await resumeDisk(disk, { keys: { passphrase: 'pw' } });
    expect(await plainHash(disk, 'pw')).toBe(sha256(image));
  });

  it('are refused, naming --trust-v1-journal, when the descriptor differs; accepted with trustV1Journal', async () => {
    const disk = interrupted('v1-differs');
    const p = readJournal(disk);
    writeV1(disk, p, p.header);
    appendFileSync(disk, '# edited\n');
    const err = await errorOf(resumeDisk(disk, { keys: { passphrase: 'pw' } }));
    expect(err?.code).toBe('ERR_JOURNAL');
    expect(err?.message).toContain('--trust-v1-journal');
    expect(openDescriptorsOn(`${disk}.vmseal-journal`)).toBe(0);
    await resumeDisk(disk, { keys: { passphrase: 'pw' }, trustV1Journal: true });
    expect(await plainHash(disk, 'pw')).toBe(sha256(image));
  });
});
