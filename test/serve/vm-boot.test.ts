// A real VM boots from an encrypted disk served by `vmseal serve` (issue 9): Debian's kernel and
// initrd in qemu-system-x86_64 (KVM if usable, else TCG emulation) with the NBD export as its virtio
// root disk. The guest (test/helpers/vm.ts) reads a file the host put on the disk, writes 8 MiB of
// fresh random data with its hash, syncs and powers off. Then the server is stopped with SIGTERM, the
// disk decrypted on the host, and the guest's files checked with debugfs and `e2fsck -fn`.
//
// Everything is real: the built CLI (dist/), the local key provider in a temp VMSEAL_HOME, a Unix
// socket in a 0700 temp folder. Each boot takes ~15-20 s under TCG on an idle machine (~50 s measured
// on a loaded 2-core one); the timeouts allow for a loaded CI machine. It is skipped only where no
// accelerator works at all (neither /dev/kvm nor TCG); missing packages fail it (see findVmTools).
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, json, qemuImg, vmseal, vmsealChild, type CliResult } from '../cli/run-cli.js';
import {
  bootFromNbd,
  consoleTail,
  e2fsckReadOnly,
  findVmTools,
  GUEST_DONE,
  killRunningVms,
  makeGuestImage,
  probeAccel,
  readExt4File,
  readGuestResult,
  type Accel,
  type VmTools,
} from '../helpers/vm.js';

const MiB = 1024 * 1024;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

// Decided before the tests are collected, so that a skip is visible as one.
let tools: VmTools | undefined;
let toolsError: unknown;
try {
  tools = findVmTools();
} catch (e) {
  toolsError = e;
}
// Missing tools: run, and fail with the packages to install (accel is then irrelevant).
const accel: Accel | null = tools ? await probeAccel(tools) : 'tcg';
if (accel === null) console.warn('vm-boot: skipped: qemu-system-x86_64 starts neither with KVM (/dev/kvm) nor with TCG here');

/** The test waits this long for `vmseal: serving NAME on URI` on its stderr. */
const READY_TIMEOUT_MS = 60_000;

/** Start `vmseal serve` and resolve with the URI it announces once it accepts connections. */
function startServe(args: string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; uri: string; stderr: () => string }> {
  return new Promise((resolve, reject) => {
    const child = vmsealChild(['serve', ...args], env);
    let stderr = '';
    let ready = false;
    const fail = (why: string) => {
      if (ready) return;
      ready = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`vmseal serve ${why}\nstderr: ${stderr}`));
    };
    const timer = setTimeout(() => fail(`did not announce "serving" within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
    child.stdout!.resume();
    child.stderr!.on('data', (d) => {
      stderr += String(d);
      const m = ready ? null : /^vmseal: serving (\S+) on (\S+)$/m.exec(stderr);
      if (m) {
        ready = true;
        clearTimeout(timer);
        resolve({ child, uri: m[2]!, stderr: () => stderr });
      }
    });
    // After "ready", an exit is the test's business (it stops the server and checks the code).
    child.on('exit', (code, signal) => fail(`exited (${code ?? signal}) before it was ready`));
  });
}

function exitOf(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

// The default (monolithicFlat, 512-byte units: what `vmseal encrypt` makes of a raw image), and a
// sparse disk with 4 KiB units: the guest's writes then allocate grains through the server, and its
// 512-byte-aligned requests meet 4 KiB data units.
const VARIANTS = [
  { subformat: 'monolithicFlat', unitSize: 512 },
  { subformat: 'monolithicSparse', unitSize: 4096 },
];

describe.skipIf(accel === null)('a qemu VM boots from an encrypted disk served by `vmseal serve`', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let server: ChildProcess | undefined;

  beforeAll(async () => {
    if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
      throw new Error('dist/cli/main.js is missing: this test runs the built CLI; run `npm run build` first');
    }
    dir = await mkdtemp(join(tmpdir(), 'vmseal-vm-boot-'));
    // XDG_RUNTIME_DIR removed: the server's control socket then goes into this test's VMSEAL_HOME,
    // not into the user's runtime folder where another run could be using it.
    env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), XDG_RUNTIME_DIR: undefined });
  });

  // After each test: a server a failed test left running still holds the control socket the next
  // variant's server needs (it would be refused, hiding the next variant's own result).
  afterEach(async () => {
    if (server && server.exitCode === null && server.signalCode === null) {
      server.kill('SIGKILL');
      await exitOf(server, 10_000);
    }
    server = undefined;
    killRunningVms();
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it.each(VARIANTS)(
    '$subformat, $unitSize-byte units: the guest reads and writes through the export; the data is encrypted at rest and intact after decryption',
    { timeout: 240_000 },
    async ({ subformat, unitSize }) => {
      if (!tools) throw toolsError;
      const work = join(dir, `${subformat}-${unitSize}`);
      await mkdir(work);

      // 1. The guest's disk, encrypted with the local key provider.
      const guest = await makeGuestImage(tools, join(work, 'guest.raw'));
      // The /init text is a plaintext marker: it is in the plain image (so its absence from the
      // encrypted files below means something).
      expect((await readFile(guest.path)).includes(Buffer.from(GUEST_DONE))).toBe(true);
      const enc = join(work, 'guest.vmdk');
      const e = json(ok(await vmseal(['encrypt', guest.path, enc, '--subformat', subformat, '--unit-size', String(unitSize), '--json'], env)));
      expect(e).toMatchObject({ ok: true, encrypted: true, subformat, unitSize, virtualSize: 128 * MiB });
      await rm(guest.path);

      // 2. Serve it on a Unix socket in a private folder.
      const run = join(work, 'run');
      await mkdir(run, { mode: 0o700 });
      const sock = join(run, 'nbd.sock');
      const served = await startServe([enc, '--socket', sock, '--name', 'guest'], env);
      server = served.child;
      expect(served.uri).toBe(`nbd+unix:///guest?socket=${sock}`);

      // 3. Boot. panic=-1 and -no-reboot: any failure in the guest ends qemu too.
      const vm = await bootFromNbd(tools, accel!, served.uri, 200_000);
      const why = `qemu ${vm.timedOut ? 'timed out' : `exited ${vm.code ?? vm.signal}`}; console:\n${consoleTail(vm)}\nserver stderr:\n${served.stderr()}`;
      expect(vm.timedOut, why).toBe(false);
      expect(vm.console, why).toContain(GUEST_DONE);
      expect(vm.code, why).toBe(0);

      // 4. A clean stop: every export flushed, the lock released, exit 0.
      server.kill('SIGTERM');
      const stopped = await exitOf(server, 60_000);
      expect(stopped, `server stderr:\n${served.stderr()}`).toEqual({ code: 0, signal: null });

      // 5. The disk is sound after the guest's writes (for a sparse disk: the grains it allocated),
      // to vmseal (metadata and every byte read) and to qemu-img; decrypted on the host, its file
      // system is clean and holds what the guest wrote.
      expect(json(ok(await vmseal(['verify', enc, '--json'], env)))).toMatchObject({ ok: true, encrypted: true });
      if (subformat === 'monolithicSparse') expect(await qemuImg(['check', enc])).toMatch(/No errors/);
      const out = join(work, 'decrypted.raw');
      ok(await vmseal(['decrypt', enc, out, '--raw'], env));
      const fsck = await e2fsckReadOnly(tools, out);
      expect(fsck.code, fsck.output).toBe(0);
      const result = await readGuestResult(tools, out);
      expect(result.written.size).toBe(8 * MiB);
      expect(result.written.hostSha256).toMatch(/^[0-9a-f]{64}$/);
      expect(result.written.guestSha256).toBe(result.written.hostSha256);
      expect(result.hostFileSeenByGuest).toBe(guest.hostSha256);

      // 6. At rest the disk is ciphertext: neither the /init text nor the guest's data are in its files.
      const writtenHead = (await readExt4File(tools, out, '/written.bin')).subarray(0, 64);
      const files = (await readdir(work)).filter((n) => n.startsWith('guest') && n.endsWith('.vmdk'));
      expect(files.length).toBeGreaterThan(0);
      for (const f of files) {
        const bytes = await readFile(join(work, f));
        expect(bytes.includes(Buffer.from(GUEST_DONE)), `${f} holds the plaintext of /init`).toBe(false);
        expect(bytes.includes(writtenHead), `${f} holds the guest's data in plaintext`).toBe(false);
      }
    },
  );
});
