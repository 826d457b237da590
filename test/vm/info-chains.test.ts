// `vm info` over snapshot chains: a disk the .vmx names that tops a chain is listed with each layer
// and its state; and an interrupted `vm rekey` is reported with the command that finishes it.
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEncryptedDisk, createEncryptedSnapshot } from '../../src/disk/index.js';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { inspectVm, rekeyVm } from '../../src/vm/index.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
let home: string;
let provider: LocalKeyProvider;
let dir: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-vminfo-chain-');
  home = join(tmp.dir, 'home');
  provider = new LocalKeyProvider({ home });
  dir = join(tmp.dir, 'vm');
  mkdirSync(dir);
  const base = join(dir, 'disk.vmdk');
  const d = await createEncryptedDisk(base, { capacity: 1 << 20, subformat: 'monolithicSparse', lockers: [{ kind: 'provider', provider }] });
  await d.write(0, randomBytes(4096));
  await d.close();
  const top = await createEncryptedSnapshot(base, { keys: { providers: [provider] } });
  writeFileSync(join(dir, 'vm.vmx'), `config.version = "8"\nscsi0:0.fileName = "${top.slice(dir.length + 1)}"\nscsi0:1.fileName = "data.vmdk"\n`);
  const data = await createEncryptedDisk(join(dir, 'data.vmdk'), {
    capacity: 1 << 20,
    subformat: 'monolithicSparse',
    lockers: [{ kind: 'provider', provider }],
  });
  await data.close();
});
afterAll(async () => {
  await provider.close();
  tmp?.cleanup();
});

describe('vm info over snapshot chains', () => {
  it('lists each layer of a chain with its state; a disk of one layer has none', async () => {
    const info = await inspectVm(dir);
    expect(info.disks![0]!.layers).toEqual([
      { path: join(dir, 'disk-000001.vmdk'), state: 'vmseal' },
      { path: join(dir, 'disk.vmdk'), state: 'vmseal' },
    ]);
    expect(info.disks![1]!.layers).toBeUndefined();
    const r = await vmseal(['vm', 'info', dir], cleanEnv({ VMSEAL_HOME: home }));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`  snapshot layer 1 of 2 (top): ${join(dir, 'disk-000001.vmdk')}: encrypted by vmseal`);
    expect(r.stdout).toContain(`  snapshot layer 2 of 2 (base): ${join(dir, 'disk.vmdk')}: encrypted by vmseal`);
    const j = json(await vmseal(['vm', 'info', dir, '--json'], cleanEnv({ VMSEAL_HOME: home })));
    expect(j.disks[0].layers).toHaveLength(2);
  });

  it('reports an interrupted vm rekey with the command that finishes it', async () => {
    await rekeyVm(dir, {
      mode: 'shallow',
      keys: { providers: [provider] },
      provider,
      onStep: () => {
        throw new Error('killed');
      },
    }).catch(() => undefined);
    const r = await vmseal(['vm', 'info', dir], cleanEnv({ VMSEAL_HOME: home }));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('An interrupted vm rekey --shallow');
    expect(r.stdout).toContain(`run \`vmseal vm rekey --shallow ${dir}\``);
    const done = await rekeyVm(dir, { mode: 'shallow', keys: { providers: [provider] }, provider });
    expect(done.resumed).toBe(true);
  });
});
