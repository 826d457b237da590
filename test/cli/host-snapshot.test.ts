// `vmseal host snapshot NAME [--name N]` against a real `vmseal serve` child: prints the new top,
// qemu-io keeps reading and writing the same export across two snapshots, --json, typed errors with
// exit codes and hints, and the server stopped with SIGTERM leaves a chain that opens with the data.
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { json, vmseal } from './run-cli.js';
import { serveFixture } from './serve-process.js';
import { encryptedDisk, random, run } from '../serve/helpers.js';

const MiB = 1 << 20;
const served = serveFixture('vmseal-host-snapshot-cli-');
let env: NodeJS.ProcessEnv;
let pwFile: string;
beforeAll(() => {
  env = served.env();
  pwFile = served.pwFile();
});

/**
 * A served disk of its own: an encrypted monolithicSparse disk `name` of 4 MiB (random content in
 * its first MiB) in `folder`, served by a `vmseal serve` child on a Unix socket with a control
 * socket. `stop()` ends the server with SIGTERM, which must exit 0.
 */
async function serveDisk(folder: string, name: string) {
  const dir = join(served.dir(), folder);
  mkdirSync(dir, { mode: 0o700 });
  const content = random(MiB);
  const disk = await encryptedDisk(dir, name, { subformat: 'monolithicSparse', capacity: 4 * MiB, content });
  const control = join(dir, 'ctl', 'serve.sock');
  const socket = join(dir, 'nbd.sock');
  const s = await served.start([disk, '--socket', socket, '--control', control, '--passphrase-file', pwFile], (err) => /^vmseal: control socket /m.test(err));
  const stop = async (): Promise<void> => {
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
  };
  return { dir, content, disk, control, uri: `nbd+unix:///${name}?socket=${socket}`, stop };
}

/** `disk` decrypts to `content` (its first MiB) with `writes` ([pattern byte, offset] of 64 KiB each) over zeros. */
async function expectDecrypted(dir: string, disk: string, content: Buffer, writes: Array<[number, number]>): Promise<void> {
  const out = join(dir, `${basename(disk, '.vmdk')}.raw`);
  const dec = await vmseal(['decrypt', disk, out, '--raw', '--passphrase-file', pwFile], env);
  expect(dec.code, dec.stderr).toBe(0);
  const expected = Buffer.alloc(4 * MiB);
  content.copy(expected, 0);
  for (const [pattern, at] of writes) expected.fill(pattern, at, at + 65536);
  expect(readFileSync(out).equals(expected)).toBe(true);
}

describe('vmseal host snapshot', () => {
  it('switches a served encrypted disk to a new child twice, printing each new top; the client reads and writes on', async () => {
    const { dir, content, disk, control, uri, stop } = await serveDisk('snap', 'vm');
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x11 ${MiB} 65536`, uri]);

    const first = await vmseal(['host', 'snapshot', 'vm', '--control', control], env);
    expect(first.code, first.stderr).toBe(0);
    const top1 = join(dir, 'vm-000001.vmdk');
    expect(first.stdout).toBe(`${top1}\n`);
    expect(statSync(disk).mode & 0o222).toBe(0);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x22 ${2 * MiB} 65536`, uri]);

    const second = json(await vmseal(['host', 'snapshot', 'vm', '--name', 'vm-before-upgrade', '--control', control, '--json'], env));
    const top2 = join(dir, 'vm-before-upgrade.vmdk');
    expect(second).toMatchObject({ ok: true, command: 'host snapshot', control, top: top2, parent: top1, export: { name: 'vm', path: top2 } });
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x33 ${3 * MiB} 65536`, uri]);
    const read = await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      `read -P 0x11 ${MiB} 65536`,
      '-c',
      `read -P 0x22 ${2 * MiB} 65536`,
      '-c',
      `read -P 0x33 ${3 * MiB} 65536`,
      uri,
    ]);
    expect(read.match(/read 65536\/65536/g)).toHaveLength(3);
    const status = json(await vmseal(['host', 'status', '--control', control, '--json'], env));
    expect(status.exports[0]).toMatchObject({ name: 'vm', path: top2, sparse: true });

    // Typed errors: an unknown export (exit 2) and a name already taken (the export goes on).
    const unknown = await vmseal(['host', 'snapshot', 'nope', '--control', control], env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(
      /^vmseal: cannot take a snapshot of export nope: no export is named "nope" \(served: vm\)\. `vmseal host status` lists the exports/,
    );
    const taken = await vmseal(['host', 'snapshot', 'vm', '--name', 'vm-000001', '--control', control], env);
    expect(taken.code).not.toBe(0);
    expect(taken.stderr).toMatch(/^vmseal: cannot take a snapshot of export vm: /);
    expect(json(await vmseal(['host', 'status', '--control', control, '--json'], env)).exports[0].path).toBe(top2);

    await stop();
    const list = await vmseal(['snapshot', 'list', top2], env);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(new RegExp(`^top: +${top2} .*\\nlayer 1: ${top1} .*\\nbase: +${disk} `));
    await expectDecrypted(dir, top2, content, [
      [0x11, MiB],
      [0x22, 2 * MiB],
      [0x33, 3 * MiB],
    ]);
  });

  it('host commit --all merges a chain of three layers down to the base, live; the client reads every write', async () => {
    const { dir, content, disk, control, uri, stop } = await serveDisk('commit-all', 'vm');
    const [top1, top2] = ['vm-000001.vmdk', 'vm-000002.vmdk'].map((f) => join(dir, f));
    expect((await vmseal(['host', 'snapshot', 'vm', '--control', control], env)).code).toBe(0);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x66 ${MiB} 65536`, uri]);
    expect((await vmseal(['host', 'snapshot', 'vm', '--control', control], env)).code).toBe(0);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x77 ${2 * MiB} 65536`, uri]);

    const all = await vmseal(['host', 'commit', 'vm', '--all', '--control', control, '--json'], env);
    expect(all.code, all.stderr).toBe(0);
    expect(json(all)).toMatchObject({
      ok: true,
      command: 'host commit',
      top: disk,
      removed: top1,
      // The second commit copies both writes: the first one's merged into top1, and top1's own.
      bytesMoved: 3 * 65536,
      commits: [
        { removed: top2, top: top1, bytesMoved: 65536 },
        { removed: top1, top: disk, bytesMoved: 2 * 65536 },
      ],
      export: { name: 'vm', path: disk },
    });
    expect(existsSync(top1) || existsSync(top2)).toBe(false);
    expect(statSync(disk).mode & 0o200).not.toBe(0);
    const read = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0x66 ${MiB} 65536`, '-c', `read -P 0x77 ${2 * MiB} 65536`, uri]);
    expect(read.match(/read 65536\/65536/g)).toHaveLength(2);
    // Nothing left to merge: --all on one layer is refused like a plain commit (exit 2).
    const none = await vmseal(['host', 'commit', 'vm', '--all', '--control', control], env);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^vmseal: cannot commit the snapshot of export vm: /);

    await stop();
    await expectDecrypted(dir, disk, content, [
      [0x66, MiB],
      [0x77, 2 * MiB],
    ]);
  });

  it('host backup: a point of the frozen layer, restored with the writes before it and none after; the snapshot is committed back; a served chain is backed up as a chain point', async () => {
    const { dir, content, disk, control, uri, stop } = await serveDisk('backup', 'db');
    const repo = join(dir, 'repo');
    expect((await vmseal(['backup', 'init', repo], env)).code).toBe(0);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x44 ${MiB} 65536`, uri]);

    const b = await vmseal(['host', 'backup', 'db', repo, '--name', 'p1', '--control', control, '--json'], env);
    expect(b.code, b.stderr).toBe(0);
    // The snapshot's child was merged back: the export serves the disk itself again.
    expect(json(b)).toMatchObject({ ok: true, command: 'host backup', name: 'p1', frozen: disk, top: disk, plain: false });
    expect(existsSync(join(dir, 'db-000001.vmdk'))).toBe(false);
    await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x55 ${2 * MiB} 65536`, uri]);
    // A chain served (a snapshot taken by hand): backed up as a chain point, its temporary child committed back.
    const top = join(dir, 'db-000001.vmdk');
    expect((await vmseal(['host', 'snapshot', 'db', '--control', control], env)).code).toBe(0);
    const again = await vmseal(['host', 'backup', 'db', repo, '--name', 'p2', '--control', control, '--json'], env);
    expect(again.code, again.stderr).toBe(0);
    expect(json(again)).toMatchObject({ ok: true, command: 'host backup', name: 'p2', frozen: top, top });
    expect(existsSync(join(dir, 'db-000002.vmdk'))).toBe(false);
    const missing = await vmseal(['host', 'backup', 'db', join(dir, 'no-repo'), '--control', control], env);
    expect(missing.code).not.toBe(0);
    expect(existsSync(join(dir, 'db-000002.vmdk'))).toBe(false);
    expect((await vmseal(['host', 'commit', 'db', '--control', control], env)).code).toBe(0);

    await stop();
    const restored = join(dir, 'restored.vmdk');
    const r = await vmseal(['backup', 'restore', repo, 'p1', restored], env);
    expect(r.code, r.stderr).toBe(0);
    await expectDecrypted(dir, restored, content, [[0x44, MiB]]);
  });
});
