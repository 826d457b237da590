// `vm rekey --shallow|--deep` of a whole VM (src/vm/rekey.ts): a qemu folder (disks, a snapshot
// chain, UEFI variables, a vTPM state key) and a VMware folder (encrypted .vmx, .nvram) move onto a
// new VM KEK, their data unchanged (checked by hashes of what they decrypt to); a deep rekey makes
// new keys; a mixed VM is refused; an interrupted job continues with the KEK it recorded.
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEncryptedDisk, createEncryptedSnapshot, openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe, LocalKeyProvider, sealDek, unlockKeySafe, type LockerSpec } from '../../src/keys/index.js';
import {
  decryptStateFile,
  decryptVmx,
  encryptStateFile,
  encryptVmxFile,
  readManifest,
  readStateFileHeader,
  rekeyVm,
  VM_JOB_NAME,
  VmxFile,
  type VmError,
} from '../../src/vm/index.js';
import { cleanEnv, json, vmseal, vmsealChild } from '../cli/run-cli.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';

const MiB = 1 << 20;
const PHRASE = 'vm-rekey-test-passphrase';
let tmp: ReturnType<typeof tempDir>;
let home: string;
let provider: LocalKeyProvider;
let vmKek: string;
let seq = 0;

beforeAll(async () => {
  tmp = tempDir('vmseal-vmrekey-');
  home = join(tmp.dir, 'home');
  provider = new LocalKeyProvider({ home });
  vmKek = (await provider.createKey({ name: 'vm' })).keyId;
});
afterAll(async () => {
  await provider.close();
  tmp?.cleanup();
});

const keys = () => ({ providers: [provider] });
const vmLocker = (): LockerSpec => ({ kind: 'provider', provider, keyId: vmKek });
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** An encrypted disk of 2 MiB of random data; returns the hash of its content. */
async function disk(path: string, lockers: LockerSpec[] = [vmLocker()], size = 2 * MiB): Promise<void> {
  const d = await createEncryptedDisk(path, { capacity: size, subformat: 'monolithicSparse', lockers });
  try {
    await d.write(0, randomBytes(size));
  } finally {
    await d.close();
  }
}

async function diskHash(path: string): Promise<string> {
  const d = await openDisk(path, { keys: keys(), readOnly: true });
  try {
    const buf = Buffer.alloc(d.capacity);
    await d.readInto(0, buf);
    return sha(buf);
  } finally {
    await d.close();
  }
}

async function stateHash(path: string): Promise<string> {
  const out = join(tmp.dir, `dec${seq++}`);
  await decryptStateFile(path, out, { keys: keys() });
  return sha(readFileSync(out));
}

async function stateFile(path: string, lockers: LockerSpec[] = [vmLocker()]): Promise<void> {
  const plain = join(tmp.dir, `plain${seq++}`);
  writeFileSync(plain, randomBytes(300_000));
  await encryptStateFile(plain, path, { lockers });
}

/** The provider lockers of a KeySafe, as "provider/key". */
const kekOf = (keySafe: string): string[] =>
  describeKeySafe(keySafe)
    .filter((l) => l.kind === 'provider')
    .map((l) => `${l.providerId}/${l.keyId}`);

/** A qemu VM folder: disk0 (plain chain-less), disk1 with a snapshot child, UEFI variables, a vTPM key. */
async function qemuVm(opts: { chain?: boolean; plainDisk?: boolean; phrase?: boolean } = {}): Promise<string> {
  const dir = join(tmp.dir, `qemu${seq++}`);
  mkdirSync(dir);
  const lockers = opts.phrase ? [vmLocker(), phraseLocker(PHRASE)] : [vmLocker()];
  await disk(join(dir, 'disk0.vmdk'), lockers);
  const disks = [{ file: 'disk0.vmdk' }];
  if (opts.chain) {
    await disk(join(dir, 'disk1.vmdk'));
    const child = await createEncryptedSnapshot(join(dir, 'disk1.vmdk'), { keys: keys() });
    const d = await openDisk(child, { keys: keys() });
    await d.write(MiB, randomBytes(4096));
    await d.close();
    disks.push({ file: child.slice(dir.length + 1) });
  }
  if (opts.plainDisk) {
    writeFileSync(join(dir, 'plain.img'), Buffer.alloc(MiB));
    disks.push({ file: 'plain.img' });
  }
  await stateFile(join(dir, 'OVMF_VARS.fd'), lockers);
  const tpmKey = await sealDek(randomBytes(32), { cipher: 'AES-256', lockers: [vmLocker()] });
  writeFileSync(
    join(dir, 'vmseal-vm.json'),
    JSON.stringify({ format: 'vmseal-vm', version: 1, name: 'web1', disks, uefiVars: { file: 'OVMF_VARS.fd' }, tpm: { state: 'tpm', keySafe: tpmKey } }),
  );
  return dir;
}

/** Everything a VM's files decrypt to, and their KEKs and key identities. */
async function snapshotOf(dir: string, diskFiles: string[]): Promise<{ hashes: string[]; keks: string[][]; ids: string[] }> {
  const hashes: string[] = [];
  const keks: string[][] = [];
  const ids: string[] = [];
  for (const f of diskFiles) {
    const p = join(dir, f);
    hashes.push(await diskHash(p));
    const params = (await readEncryptionParams(p))!;
    keks.push(kekOf(params.keySafe));
    ids.push(params.diskId);
  }
  const vars = join(dir, 'OVMF_VARS.fd');
  hashes.push(await stateHash(vars));
  const header = await readStateFileHeader(vars);
  keks.push(kekOf(header.keySafe));
  ids.push(header.fileId.toString('hex'));
  const m = await readManifest(dir);
  if (m.tpm?.keySafe) {
    const k = await unlockKeySafe(m.tpm.keySafe, keys());
    hashes.push(sha(k.key));
    keks.push(kekOf(m.tpm.keySafe));
  }
  return { hashes, keks, ids };
}

const env = () => cleanEnv({ VMSEAL_HOME: home });

describe('vmseal vm rekey on a qemu VM folder', () => {
  it('--shallow: every disk layer, the UEFI variables and the vTPM key move to one new KEK; data and keys unchanged', async () => {
    const dir = await qemuVm({ chain: true });
    const m = await readManifest(dir);
    const files = [...m.disks.map((d) => d.file), 'disk1.vmdk'];
    const before = await snapshotOf(dir, files);
    expect(new Set(before.keks.flat())).toEqual(new Set([`local/${vmKek}`]));

    const r = await vmseal(['vm', 'rekey', dir, '--shallow', '--json'], env());
    expect(r.code, r.stderr).toBe(0);
    const out = json(r);
    const newKek = `${out.kek.providerId}/${out.kek.keyId}`;
    expect(newKek).not.toBe(`local/${vmKek}`);
    // disk0, the child and its base, the UEFI variables, the vTPM key.
    expect(out.steps.map((s: { kind: string; action: string }) => `${s.kind}:${s.action}`)).toEqual([
      'disk:rekeyed',
      'disk:rekeyed',
      'disk:rekeyed',
      'state:rekeyed',
      'tpm:rekeyed',
    ]);
    const after = await snapshotOf(dir, files);
    expect(after.hashes).toEqual(before.hashes);
    expect(after.ids).toEqual(before.ids); // same DEKs and file ids: a shallow rekey
    for (const k of after.keks) expect(k).toEqual([newKek]);
    expect(existsSync(join(dir, VM_JOB_NAME))).toBe(false);
  });

  it('--deep: new disk keys and file keys under a new KEK, the vTPM key rewrapped', async () => {
    const dir = await qemuVm();
    const before = await snapshotOf(dir, ['disk0.vmdk']);
    const r = await vmseal(['vm', 'rekey', dir, '--deep', '--json'], env());
    expect(r.code, r.stderr).toBe(0);
    const out = json(r);
    const newKek = `${out.kek.providerId}/${out.kek.keyId}`;
    expect(out.steps.find((s: { kind: string }) => s.kind === 'tpm').detail).toBe('state key rewrapped, not rotated');
    const after = await snapshotOf(dir, ['disk0.vmdk']);
    expect(after.hashes).toEqual(before.hashes); // same data, same vTPM state key
    expect(after.ids[0]).not.toBe(before.ids[0]); // a new DEK: a new disk id
    expect(after.ids[1]).not.toBe(before.ids[1]); // the UEFI variables re-encrypted
    for (const k of after.keks) expect(k).toEqual([newKek]);
  });

  it('--deep of a VM whose disk is a snapshot chain: every layer under one new DEK, plaintext kept; a killed run is continued; vm decrypt after', async () => {
    const dir = await qemuVm({ chain: true });
    const m = await readManifest(dir);
    const child = m.disks[1]!.file;
    const files = ['disk0.vmdk', 'disk1.vmdk', child];
    const before = await snapshotOf(dir, files);

    // Killed while the chain is being rebuilt (its staging folder exists), then run again.
    const killed = vmsealChild(['vm', 'rekey', dir, '--deep'], env());
    const exited = new Promise<void>((done) => killed.on('close', () => done()));
    const stage = join(dir, '.disk1.vmdk.vmseal-chain-rekey');
    for (let i = 0; i < 2000 && killed.exitCode === null && !existsSync(stage); i++) await new Promise((r) => setTimeout(r, 5));
    killed.kill('SIGKILL');
    await exited;
    expect(existsSync(join(dir, VM_JOB_NAME)), 'the first run was killed under way').toBe(true);

    const r = await vmseal(['vm', 'rekey', dir, '--deep', '--json'], env());
    expect(r.code, r.stderr).toBe(0);
    const out = json(r);
    const newKek = `${out.kek.providerId}/${out.kek.keyId}`;
    const after = await snapshotOf(dir, files);
    expect(after.hashes).toEqual(before.hashes); // every layer's plaintext (the base alone, and the chain)
    for (const k of after.keks) expect(k).toEqual([newKek]);
    for (let i = 0; i < 3; i++) expect(after.ids[i]).not.toBe(before.ids[i]);
    expect(after.ids[1]).toBe(after.ids[2]); // one DEK for the chain
    expect(existsSync(stage)).toBe(false);
    expect(existsSync(join(dir, VM_JOB_NAME))).toBe(false);

    const dec = await vmseal(['vm', 'decrypt', dir], env());
    expect(dec.code, dec.stderr).toBe(0);
    for (const [i, f] of files.entries()) {
      const d = await openDisk(join(dir, f), { readOnly: true });
      const buf = Buffer.alloc(d.capacity);
      await d.readInto(0, buf);
      await d.close();
      expect(sha(buf), `${f} decrypted`).toBe(before.hashes[i]);
    }
  });

  it('a mixed VM is refused with the disks in each state, and rekeyed with --allow-mixed', async () => {
    const dir = await qemuVm({ plainDisk: true });
    const r = await vmseal(['vm', 'rekey', dir, '--shallow'], env());
    expect(r.code).toBe(5);
    expect(r.stderr).toContain('refuses the mixed VM');
    expect(r.stderr).toContain('encrypted disks: disks[0]');
    expect(r.stderr).toContain('plain disks: disks[1]');
    const ok = await vmseal(['vm', 'rekey', dir, '--shallow', '--allow-mixed', '--json'], env());
    expect(ok.code, ok.stderr).toBe(0);
    expect(json(ok).steps.find((s: { path: string }) => s.path.endsWith('plain.img'))).toMatchObject({ action: 'skipped', detail: 'not encrypted' });
  });

  it('--deep with a recovery passphrase needs a decision; --remove-recovery-passphrase drops it, shallow keeps it', async () => {
    const dir = await qemuVm({ phrase: true });
    const r = await vmseal(['vm', 'rekey', dir, '--deep'], env());
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--keep-recovery-passphrase');
    const shallow = await vmseal(['vm', 'rekey', dir, '--shallow'], env());
    expect(shallow.code, shallow.stderr).toBe(0);
    expect(describeKeySafe((await readEncryptionParams(join(dir, 'disk0.vmdk')))!.keySafe).some((l) => l.kind === 'passphrase')).toBe(true);
    const deep = await vmseal(['vm', 'rekey', dir, '--deep', '--remove-recovery-passphrase'], env());
    expect(deep.code, deep.stderr).toBe(0);
    expect(describeKeySafe((await readEncryptionParams(join(dir, 'disk0.vmdk')))!.keySafe).some((l) => l.kind === 'passphrase')).toBe(false);
    expect(describeKeySafe((await readStateFileHeader(join(dir, 'OVMF_VARS.fd'))).keySafe).some((l) => l.kind === 'passphrase')).toBe(false);
  });
});

describe('rekeyVm on a VMware folder', () => {
  const PLAIN_VMX = '.encoding = "UTF-8"\nconfig.version = "8"\nscsi0:0.fileName = "disk0.vmdk"\ndisplayName = "Win"\nnvram = "win.nvram"\n';

  async function vmwareVm(): Promise<string> {
    const dir = join(tmp.dir, `vmw${seq++}`);
    mkdirSync(dir);
    await disk(join(dir, 'disk0.vmdk'));
    await stateFile(join(dir, 'win.nvram'));
    writeFileSync(join(dir, 'win.vmx'), PLAIN_VMX);
    await encryptVmxFile(dir, { lockers: [vmLocker()] });
    return dir;
  }

  it('shallow changes only the KeySafe line of the .vmx; deep re-encrypts it; both decrypt to the same text', async () => {
    const dir = await vmwareVm();
    const vmx = join(dir, 'win.vmx');
    const old = VmxFile.parse(readFileSync(vmx));
    const shallow = await rekeyVm(dir, { mode: 'shallow', keys: keys(), provider });
    expect(shallow.steps.map((s) => s.kind)).toEqual(['disk', 'state', 'config']);
    const now = VmxFile.parse(readFileSync(vmx));
    expect(now.lines.map((l) => l.raw).filter((raw) => !raw.startsWith('encryption.keySafe'))).toEqual(
      old.lines.map((l) => l.raw).filter((raw) => !raw.startsWith('encryption.keySafe')),
    );
    expect(kekOf(now.get('encryption.keySafe')!)).toEqual([`local/${shallow.kek.keyId}`]);
    expect((await decryptVmx(readFileSync(vmx), keys())).plain.toString()).toBe(PLAIN_VMX);

    const deep = await rekeyVm(dir, { mode: 'deep', keys: keys(), provider });
    const again = VmxFile.parse(readFileSync(vmx));
    expect(again.get('encryption.data')).not.toBe(now.get('encryption.data'));
    expect(kekOf(again.get('encryption.keySafe')!)).toEqual([`local/${deep.kek.keyId}`]);
    expect((await decryptVmx(readFileSync(vmx), keys())).plain.toString()).toBe(PLAIN_VMX);
    expect(kekOf((await readStateFileHeader(join(dir, 'win.nvram'))).keySafe)).toEqual([`local/${deep.kek.keyId}`]);
  });

  it('an interrupted job continues with the KEK it recorded; another mode is refused until it is finished', async () => {
    const dir = await vmwareVm();
    const before = await diskHash(join(dir, 'disk0.vmdk'));
    const killed = await rekeyVm(dir, {
      mode: 'shallow',
      keys: keys(),
      provider,
      onStep: () => {
        throw new Error('killed after the first file');
      },
    }).catch((e: unknown) => e as Error);
    expect((killed as Error).message).toBe('killed after the first file');
    const job = JSON.parse(readFileSync(join(dir, VM_JOB_NAME), 'utf8')) as {
      operation: string;
      kek: { keyId: string };
      steps: Array<{ file: string; done: boolean }>;
    };
    expect(job.operation).toBe('rekey-shallow');
    expect(job.steps.map((st) => `${st.file}:${st.done}`)).toEqual(['disk0.vmdk:true', 'win.nvram:false', 'win.vmx:false']);
    const journal = { keyId: job.kek.keyId };

    const other = (await rekeyVm(dir, { mode: 'deep', keys: keys(), provider }).catch((e: unknown) => e)) as VmError;
    expect(other.code).toBe('ERR_VM_JOB');
    expect(other.message).toContain('has an interrupted vm rekey --shallow');

    const resumed = await rekeyVm(dir, { mode: 'shallow', keys: keys(), provider });
    expect(resumed.resumed).toBe(true);
    expect(resumed.kek.keyId).toBe(journal.keyId);
    expect(resumed.steps.map((s) => s.action)).toEqual(['already done', 'rekeyed', 'rekeyed']);
    expect(kekOf((await readEncryptionParams(join(dir, 'disk0.vmdk')))!.keySafe)).toEqual([`local/${journal.keyId}`]);
    expect(kekOf(VmxFile.parse(readFileSync(join(dir, 'win.vmx'))).get('encryption.keySafe')!)).toEqual([`local/${journal.keyId}`]);
    expect(await diskHash(join(dir, 'disk0.vmdk'))).toBe(before);
    expect(existsSync(join(dir, VM_JOB_NAME))).toBe(false);
  });
});

describe('vmseal vm rekey killed with SIGKILL', () => {
  it('a second run continues the job with the recorded KEK; every file ends under it, data unchanged', async () => {
    // Three disks: the kill comes while the job is under way (the journal lists a file done). The two
    // added disks are larger, so that the job is still running when the first step is marked done.
    const dir = await qemuVm();
    for (const n of ['disk2.vmdk', 'disk3.vmdk']) await disk(join(dir, n), [vmLocker()], 48 * MiB);
    const m = JSON.parse(readFileSync(join(dir, 'vmseal-vm.json'), 'utf8')) as { disks: Array<{ file: string }> };
    m.disks.push({ file: 'disk2.vmdk' }, { file: 'disk3.vmdk' });
    writeFileSync(join(dir, 'vmseal-vm.json'), JSON.stringify(m));
    const files = ['disk0.vmdk', 'disk2.vmdk', 'disk3.vmdk'];
    const before = await snapshotOf(dir, files);

    const child = vmsealChild(['vm', 'rekey', dir, '--deep'], env());
    const exited = new Promise<void>((done) => child.on('close', () => done()));
    const journalPath = join(dir, VM_JOB_NAME);
    let recorded: { keyId: string; done: number } | undefined;
    for (let i = 0; i < 6000 && child.exitCode === null; i++) {
      await new Promise((r) => setTimeout(r, 2));
      try {
        const job = JSON.parse(readFileSync(journalPath, 'utf8')) as { kek: { keyId: string }; steps: Array<{ done: boolean }> };
        recorded = { keyId: job.kek.keyId, done: job.steps.filter((st) => st.done).length };
        if (recorded.done >= 1) break;
      } catch {
        recorded = undefined; // not there yet, or being renamed into place
      }
    }
    child.kill('SIGKILL');
    await exited;
    expect(recorded?.done, 'the job file should mark a file done before the kill').toBeGreaterThanOrEqual(1);
    expect(existsSync(journalPath)).toBe(true);

    const r = await vmseal(['vm', 'rekey', dir, '--deep', '--json'], env());
    expect(r.code, r.stderr).toBe(0);
    const out = json(r);
    expect(out.resumed).toBe(true);
    expect(out.kek.keyId).toBe(recorded!.keyId);
    expect(out.steps.filter((s: { action: string }) => s.action === 'already done').length).toBeGreaterThanOrEqual(1);
    const after = await snapshotOf(dir, files);
    expect(after.hashes).toEqual(before.hashes);
    for (const k of after.keks) expect(k).toEqual([`local/${recorded!.keyId}`]);
    for (let i = 0; i < 3; i++) expect(after.ids[i]).not.toBe(before.ids[i]);
    expect(existsSync(journalPath)).toBe(false);
    // Nothing of the killed run is left beside the VM's files (temp files, staging copies).
    expect(readdirSync(dir).sort()).toEqual(['OVMF_VARS.fd', 'disk0.vmdk', 'disk2.vmdk', 'disk3.vmdk', 'vmseal-vm.json']);
  });
});

describe('state files of format version 1', () => {
  it('still decrypt, and a deep rekey rewrites them as version 2', async () => {
    // A version-1 container made from docs/vm.md with node:crypto: the file key itself is the GCM key.
    const plain = randomBytes(5000);
    const fileKey = randomBytes(32);
    const keySafe = await sealDek(fileKey, { cipher: 'AES-256', lockers: [vmLocker()] });
    const fileId = randomBytes(16);
    const header = Buffer.alloc(48);
    header.write('VMSEALST', 0, 'latin1');
    header.writeUInt16BE(1, 8);
    header.writeUInt32BE(1 << 20, 12);
    header.writeBigUInt64BE(BigInt(plain.length), 16);
    fileId.copy(header, 24);
    header.writeUInt32BE(keySafe.length, 44);
    const nonce = Buffer.concat([fileId.subarray(0, 4), Buffer.alloc(8)]);
    const aad = Buffer.concat([createHash('sha256').update(header.subarray(0, 44)).digest(), Buffer.alloc(8), Buffer.from([1])]);
    const c = createCipheriv('aes-256-gcm', fileKey, nonce);
    c.setAAD(aad);
    const body = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
    const dir = join(tmp.dir, `v1-${seq++}`);
    mkdirSync(dir);
    const file = join(dir, 'win.nvram');
    writeFileSync(file, Buffer.concat([header, Buffer.from(keySafe, 'latin1'), body]));
    expect((await readStateFileHeader(file)).version).toBe(1);
    expect(await stateHash(file)).toBe(sha(plain));

    await disk(join(dir, 'disk0.vmdk'));
    writeFileSync(join(dir, 'win.vmx'), 'config.version = "8"\nscsi0:0.fileName = "disk0.vmdk"\nnvram = "win.nvram"\n');
    await rekeyVm(dir, { mode: 'deep', keys: keys(), provider });
    expect((await readStateFileHeader(file)).version).toBe(2);
    expect(await stateHash(file)).toBe(sha(plain));
  });
});
