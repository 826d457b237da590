// `vmseal convert … --force` over an existing output removes that output's own files — the
// descriptor and the extents its descriptor names — and nothing else, even when the old output
// cannot be opened (a corrupt extent) or is a snapshot whose parent lies beside it (the parent is
// another disk). The old output's files are listed from its descriptor, never by opening it.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, qemuImg, vmseal, type CliResult } from './run-cli.js';

const MiB = 1024 * 1024;

let dir: string;
let env: NodeJS.ProcessEnv;
let raw: string;
let source: Buffer;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A folder with the source image and a bystander file that no disk names. */
async function folder(name: string): Promise<string> {
  const f = join(dir, name);
  await mkdir(f);
  await writeFile(join(f, 'bystander.txt'), 'not a disk file\n');
  return f;
}

/** The virtual disk of a plain VMDK, read by qemu-img (independent of vmseal). */
async function content(path: string): Promise<Buffer> {
  const out = `${path}.check.raw`;
  await qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', path, out]);
  try {
    return await readFile(out);
  } finally {
    await rm(out, { force: true });
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-convert-force-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  source = Buffer.alloc(4 * MiB);
  for (let i = 0; i < 300_000; i++) source[4096 + i] = (i * 31) & 0xff || 1;
  raw = join(dir, 'src.img');
  await writeFile(raw, source);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('convert --force over an existing output', () => {
  it('removes every extent of an old output that cannot be opened (a corrupt extent), and nothing else', async () => {
    const f = await folder('corrupt');
    const out = join(f, 'out.vmdk');
    // Two 2 GiB extents (out-s001.vmdk, out-s002.vmdk); the second one's header is then garbage.
    await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', out, '3G']);
    const extents = (await readdir(f)).filter((n) => n.startsWith('out-'));
    expect(extents.sort()).toEqual(['out-s001.vmdk', 'out-s002.vmdk']);
    const fh = await open(join(f, 'out-s002.vmdk'), 'r+');
    await fh.write(Buffer.alloc(512, 0xa5), 0, 512, 0);
    await fh.close();
    expect((await vmseal(['info', out], env)).code).not.toBe(0); // it really cannot be opened

    ok(await vmseal(['convert', raw, out, '--subformat', 'monolithicSparse', '--force'], env));
    expect((await readdir(f)).sort()).toEqual(['bystander.txt', 'out.vmdk']);
    expect((await content(out)).equals(source)).toBe(true);
  });

  it('replaces a text descriptor whose extent is missing, removing what is there', async () => {
    const f = await folder('missing');
    const out = join(f, 'out.vmdk');
    await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentFlat', out, '3G']);
    await rm(join(f, 'out-f002.vmdk'));
    ok(await vmseal(['convert', raw, out, '--subformat', 'monolithicSparse', '--force'], env));
    expect((await readdir(f)).sort()).toEqual(['bystander.txt', 'out.vmdk']);
    expect((await content(out)).equals(source)).toBe(true);
  });

  it('keeps the parent of an old output that is a snapshot: only the snapshot is replaced', async () => {
    const f = await folder('snapshot');
    const parent = join(f, 'base.vmdk');
    const out = join(f, 'out.vmdk');
    await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', parent, '4M']);
    await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', '-b', 'base.vmdk', '-F', 'vmdk', out]);
    const parentBytes = await readFile(parent);

    ok(await vmseal(['convert', raw, out, '--subformat', 'monolithicFlat', '--force'], env));
    expect((await readdir(f)).sort()).toEqual(['base.vmdk', 'bystander.txt', 'out-flat.vmdk', 'out.vmdk']);
    expect((await readFile(parent)).equals(parentBytes)).toBe(true);
    expect((await content(out)).equals(source)).toBe(true);
    expect(await readFile(out, 'utf8')).not.toContain('parentFileNameHint');
    expect(existsSync(join(f, 'out-flat.vmdk'))).toBe(true);
  });
});
