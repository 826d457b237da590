// The vTPM of a qemu VM folder with the real swtpm, swtpm_setup and tpm2-tools: the state is made
// encrypted from the start (every swtpm that writes it got `--key fd=3`), a marker written into an
// NV index shows in an unencrypted control swtpm's state file and not in vmseal's, the marker and a
// persisted sealed object survive a restart, a state key that does not belong to the state stops
// the start with ERR_VM_TPM_KEY, and qemu attaches with the printed options.
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LocalKeyProvider, sealDek, unlockKeySafe } from '../../src/keys/index.js';
import { readManifest, rewrapVmTpmKey, startVmTpm, writeManifest, type VmTpm } from '../../src/vm/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';

const execFileAsync = promisify(execFile);
const have = (exe: string) => spawnSync('sh', ['-c', `command -v ${exe}`]).status === 0;
const tools = have('swtpm') && have('swtpm_setup') && have('tpm2_nvdefine');

const MARKER = 'VMSEAL-NV-MARKER-0123456789abcde'; // 32 bytes: the NV index's size
const SECRET = 'vmseal sealed secret 42';
const NV = '0x1500016';
const PERSISTENT = '0x81000010';

let tmp: ReturnType<typeof tempDir>;
let provider: LocalKeyProvider;
let kekId: string;
let vmDir: string;
let wrapLog: string;
let wrapper: string;
const running: VmTpm[] = [];

/** A tpm2-tools command on the TPM behind `socket` (async: swtpm's output must keep flowing to us meanwhile). */
async function tpm2(socket: string, args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(args[0]!, args.slice(1), {
    env: { ...process.env, TPM2TOOLS_TCTI: `swtpm:path=${socket}` },
    cwd: tmp.dir,
    encoding: 'latin1',
    timeout: 60_000,
  });
  return stdout;
}

/** Write the marker into an NV index and persist a sealed object, through the data socket. */
async function writeMarkerAndSeal(socket: string): Promise<void> {
  writeFileSync(join(tmp.dir, 'marker.bin'), MARKER);
  writeFileSync(join(tmp.dir, 'secret.bin'), SECRET);
  await tpm2(socket, ['tpm2_nvdefine', NV, '-C', 'o', '-s', '32', '-a', 'ownerread|ownerwrite']);
  await tpm2(socket, ['tpm2_nvwrite', NV, '-C', 'o', '-i', 'marker.bin']);
  // No resource manager between the tools and the TPM: flush transient objects after each step.
  const steps = [
    ['tpm2_createprimary', '-C', 'o', '-c', 'primary.ctx'],
    ['tpm2_create', '-C', 'primary.ctx', '-i', 'secret.bin', '-u', 'seal.pub', '-r', 'seal.priv'],
    ['tpm2_load', '-C', 'primary.ctx', '-u', 'seal.pub', '-r', 'seal.priv', '-c', 'seal.ctx'],
    ['tpm2_evictcontrol', '-C', 'o', '-c', 'seal.ctx', PERSISTENT],
  ];
  for (const step of steps) {
    await tpm2(socket, step);
    await tpm2(socket, ['tpm2_flushcontext', '-t']);
  }
}

function manifest(dir: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, tpm: { state: 'tpm' } }));
}

async function start(dir: string, opts: Partial<Parameters<typeof startVmTpm>[1]> = {}): Promise<VmTpm> {
  const t = await startVmTpm(dir, { keys: { providers: [provider] }, lockers: [{ kind: 'provider', provider, keyId: kekId }], ...opts });
  running.push(t);
  return t;
}

afterEach(async () => {
  // A failed test must not leave its swtpm holding the state for the next one.
  for (const t of running.splice(0)) await t.stop();
});

beforeAll(async () => {
  tmp = tempDir('vmseal-tpm-');
  provider = new LocalKeyProvider({ home: join(tmp.dir, 'home') });
  kekId = (await provider.createKey({ name: 'vm' })).keyId;
  vmDir = join(tmp.dir, 'vm');
  manifest(vmDir);
  // A swtpm that records how it was started (never the key: that goes through fd 3).
  wrapLog = join(tmp.dir, 'swtpm-args.log');
  wrapper = join(tmp.dir, 'swtpm-wrapper.sh');
  writeFileSync(wrapper, `#!/bin/sh\necho "$*" >> '${wrapLog}'\nexec swtpm "$@"\n`);
  chmodSync(wrapper, 0o755);
});

afterAll(async () => {
  await provider?.close();
  tmp?.cleanup();
});

describe.skipIf(!tools)('vmseal vTPM (swtpm)', () => {
  it('makes the first state encrypted, keeps the key out of argv, and the marker out of the state file', async () => {
    const t = await start(vmDir, { tools: true, swtpm: wrapper });
    expect(t.created).toBe(true);
    expect(t.dataSocket).toBeDefined();
    expect((await readManifest(vmDir)).tpm?.keySafe).toMatch(/^vmware:key\/list\/\(pair\/\(fqid\//);

    // Every swtpm that swtpm_setup or vmseal started on the state had the key on fd 3, in argv only "fd=3".
    const starts = readFileSync(wrapLog, 'utf8')
      .split('\n')
      .filter((l) => l.includes('--tpmstate') && !l.includes('--print-states'));
    expect(starts.length).toBe(2); // swtpm_setup's, then the running one
    for (const l of starts) expect(l).toMatch(/--key fd=3(,format=binary)?,mode=aes-256-cbc/);
    const stateKey = (await unlockKeySafe((await readManifest(vmDir)).tpm!.keySafe!, { providers: [provider] })).key;
    expect(readFileSync(wrapLog, 'utf8')).not.toContain(stateKey.toString('hex'));
    expect(readFileSync(wrapLog).includes(stateKey)).toBe(false);
    const permall = join(t.stateDir, 'tpm2-00.permall');
    const flags = readFileSync(permall).readUInt16BE(4);
    expect(flags & 0x1, 'swtpm blob flag: encrypted').toBe(0x1);
    expect(flags & 0x8, 'swtpm blob flag: 256-bit key').toBe(0x8);
    expect(statSync(permall).mode & 0o777).toBe(0o600);

    await writeMarkerAndSeal(t.dataSocket!);
    expect(await tpm2(t.dataSocket!, ['tpm2_nvread', NV, '-C', 'o', '-s', '32'])).toBe(MARKER);
    await t.stop();
    expect(existsSync(t.ctrlSocket)).toBe(false);
    expect(readFileSync(permall).includes(MARKER)).toBe(false);
    expect(readFileSync(permall).includes(SECRET)).toBe(false);
  });

  it('an unencrypted control swtpm does show the marker in its state file', async () => {
    const state = join(tmp.dir, 'control');
    mkdirSync(state);
    execFileSync('swtpm_setup', ['--tpm2', '--tpmstate', state, '--createek', '--pcr-banks', 'sha256'], { stdio: 'ignore' });
    const sock = join(tmp.dir, 'control.sock');
    const child = spawn(
      'swtpm',
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${state}`,
        '--server',
        `type=unixio,path=${sock}`,
        '--ctrl',
        `type=unixio,path=${sock}.ctrl`,
        '--flags',
        'not-need-init,startup-clear',
      ],
      { stdio: 'ignore' },
    );
    try {
      for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      await writeMarkerAndSeal(sock);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    const permall = readFileSync(join(state, 'tpm2-00.permall'));
    expect(permall.readUInt16BE(4) & 0x1).toBe(0);
    expect(permall.includes(MARKER)).toBe(true);
  });

  it('after a restart the marker reads back and the sealed object unseals', async () => {
    const t = await start(vmDir, { tools: true, lockers: [] });
    expect(t.created).toBe(false);
    expect(await tpm2(t.dataSocket!, ['tpm2_nvread', NV, '-C', 'o', '-s', '32'])).toBe(MARKER);
    expect(await tpm2(t.dataSocket!, ['tpm2_unseal', '-c', PERSISTENT])).toBe(SECRET);
    await t.stop();
  });

  it('a client that blocks the event loop right after the start is served (vmseal closed its own connection)', async () => {
    const t = await start(vmDir, { tools: true, lockers: [] });
    const out = execFileSync('tpm2_nvread', [NV, '-C', 'o', '-s', '32'], {
      env: { ...process.env, TPM2TOOLS_TCTI: `swtpm:path=${t.dataSocket!}` },
      encoding: 'latin1',
      timeout: 20_000,
    });
    expect(out).toBe(MARKER);
    await t.stop();
  });

  it("with a state key that is not the state's, swtpm does not start: ERR_VM_TPM_KEY", async () => {
    const m = await readManifest(vmDir);
    const good = m.tpm!.keySafe!;
    const other = await sealDek(randomBytes(32), { cipher: 'AES-256', lockers: [{ kind: 'provider', provider, keyId: kekId }] });
    await writeManifest(vmDir, { ...m, tpm: { ...m.tpm!, keySafe: other } });
    try {
      for (const tools of [true, false]) {
        const socketDir = join(tmp.dir, `sockets-${tools}`);
        const err = await start(vmDir, { tools, socketDir }).catch((e: unknown) => e as { code: string; message: string });
        expect(err).toMatchObject({ code: 'ERR_VM_TPM_KEY' });
        expect((err as { message: string }).message).toContain('does not open with the state key');
        expect(existsSync(join(socketDir, 'tpm.ctrl'))).toBe(false);
      }
    } finally {
      await writeManifest(vmDir, { ...m, tpm: { ...m.tpm!, keySafe: good } });
    }
  });

  it('a state without a keySafe in the manifest is refused: ERR_VM_MANIFEST', async () => {
    const m = await readManifest(vmDir);
    const { keySafe, ...rest } = m.tpm!;
    await writeManifest(vmDir, { ...m, tpm: rest });
    try {
      await expect(start(vmDir)).rejects.toMatchObject({ code: 'ERR_VM_MANIFEST' });
    } finally {
      await writeManifest(vmDir, { ...m, tpm: { ...rest, keySafe: keySafe! } });
    }
  });

  it('a shallow rekey rewraps the state key: the state opens with the new locker alone, the state files unchanged', async () => {
    const permall = join(vmDir, 'tpm', 'tpm2-00.permall');
    const before = readFileSync(permall);
    const m0 = await readManifest(vmDir);
    await rewrapVmTpmKey(vmDir, { keys: { providers: [provider] }, add: [phraseLocker('tpm recovery passphrase')], remove: (l) => l.kind === 'provider' });
    expect(readFileSync(permall).equals(before)).toBe(true);
    try {
      await expect(start(vmDir, { keys: { providers: [provider] }, tools: true })).rejects.toMatchObject({ code: 'ERR_NO_KEY' });
      const t = await start(vmDir, { keys: { passphrase: 'tpm recovery passphrase' }, tools: true });
      expect(await tpm2(t.dataSocket!, ['tpm2_nvread', NV, '-C', 'o', '-s', '32'])).toBe(MARKER);
      await t.stop();
    } finally {
      await writeManifest(vmDir, m0);
    }
  });

  it('a start killed after recording the key and before making the state: the next start makes it with that key', async () => {
    const dir = join(tmp.dir, 'vm-crashed');
    manifest(dir);
    const keySafe = await sealDek(randomBytes(32), { cipher: 'AES-256', lockers: [{ kind: 'provider', provider, keyId: kekId }] });
    const m = await readManifest(dir);
    await writeManifest(dir, { ...m, tpm: { ...m.tpm!, keySafe } });
    const leftover = join(dir, `tpm.tmp-${process.pid}-0123456789ab`); // a half-made first state
    mkdirSync(leftover);
    writeFileSync(join(leftover, 'tpm2-00.permall'), 'half');
    const t = await start(dir, { lockers: [], tools: true });
    expect(t.created).toBe(true);
    expect(existsSync(leftover)).toBe(false);
    expect((await readManifest(dir)).tpm!.keySafe).toBe(keySafe);
    await t.stop();
    const again = await start(dir, { lockers: [], tools: true });
    expect(again.created).toBe(false);
    await again.stop();
  });

  it('the first start without lockers is refused before anything is made', async () => {
    const dir = join(tmp.dir, 'vm-nolockers');
    manifest(dir);
    await expect(start(dir, { lockers: [] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(existsSync(join(dir, 'tpm'))).toBe(false);
  });

  it.skipIf(!have('qemu-system-x86_64'))('qemu attaches with the printed options; swtpm ends when qemu shuts the vTPM down', async () => {
    const t = await start(vmDir);
    expect(t.dataSocket).toBeUndefined();
    const qemu = spawn('qemu-system-x86_64', ['-M', 'q35', '-nodefaults', '-display', 'none', '-S', '-monitor', 'stdio', ...t.qemuArgs], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    qemu.stdout.on('data', (d: Buffer) => (out += d.toString()));
    qemu.stderr.on('data', (d: Buffer) => (out += d.toString()));
    qemu.stdin.end('info tpm\nquit\n');
    const status = await new Promise<number | null>((r) => qemu.once('exit', (c) => r(c)));
    expect(status, out).toBe(0);
    expect(out).toContain('tpm-tis');
    expect(out).toContain('emulator');
    const { code } = await t.exited;
    expect(code).toBe(0);
    await t.stop();
  });
});
