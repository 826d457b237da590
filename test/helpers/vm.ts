/**
 * Boot a real Linux VM (qemu-system-x86_64) whose root disk is an NBD export, for tests.
 *
 *   const tools = findVmTools();                 // throws: which Debian package is missing
 *   const accel = await probeAccel(tools);       // 'kvm' (if a guest really runs under it), 'tcg' or null
 *   const guest = await makeGuestImage(join(dir, 'guest.raw'));
 *   const run = await bootFromNbd(tools, accel, 'nbd+unix:///guest?socket=/…/s.sock');
 *   expect(run.code).toBe(0); …
 *   (await readGuestResult(imageDecryptedToRaw, guest)).written.ok
 *
 * The guest: an ext4 image made by `mkfs.ext4 -d` (no mount, no root needed) holding a static
 * busybox and an `/init` script. Debian's kernel and initrd (linux-image-amd64) load virtio_blk and
 * ext4, mount /dev/vda as root and run `init=/init` from the disk itself, which
 * - hashes a file the host put there (every byte is read through the export),
 * - writes a file of fresh random data and its hash (written through the export),
 * - syncs, remounts the root read-only (so the journal is clean and `e2fsck -fn` checks the file
 *   system as it is, not "skipping journal recovery"), prints a marker and powers off.
 * `panic=-1` with `-no-reboot` makes qemu exit if anything in the guest goes wrong, so a failed boot
 * ends the run instead of hanging it; the console is kept for the failure message.
 *
 * The host then reads the result with debugfs (e2fsprogs) from a raw copy of the disk: no mount.
 * See ../shared/reference/nbd.md, "Booting a real VM from an export".
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface VmTools {
  qemu: string;
  kernel: string;
  initrd: string;
  busybox: string;
  mkfs: string;
  debugfs: string;
  e2fsck: string;
}

export type Accel = 'kvm' | 'tcg';

/** A marker the guest prints on its console once its files are synced: "the script ran to the end". */
export const GUEST_DONE = 'VMSEAL-GUEST-DONE';

const WHICH_PACKAGE: Record<keyof VmTools, string> = {
  qemu: 'qemu-system-x86',
  kernel: 'linux-image-amd64',
  initrd: 'linux-image-amd64 (its initramfs-tools hook makes /boot/initrd.img-*)',
  busybox: 'busybox-static (a statically linked /bin/busybox)',
  mkfs: 'e2fsprogs',
  debugfs: 'e2fsprogs',
  e2fsck: 'e2fsprogs',
};

function firstExisting(paths: string[]): string | undefined {
  return paths.find((p) => existsSync(p));
}

/** The newest /boot/vmlinuz-VERSION that has a readable /boot/initrd.img-VERSION beside it. */
function kernelPair(): { kernel?: string; initrd?: string; unreadable?: string } {
  let names: string[] = [];
  try {
    names = readdirSync('/boot');
  } catch {
    return {};
  }
  const versions = names
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  let unreadable: string | undefined;
  for (const v of versions) {
    const kernel = `/boot/vmlinuz-${v}`;
    const initrd = `/boot/initrd.img-${v}`;
    if (!existsSync(initrd)) continue;
    try {
      // Some distributions make kernels 0600: a test run by a user then cannot boot them.
      accessSync(kernel, constants.R_OK);
      accessSync(initrd, constants.R_OK);
      return { kernel, initrd };
    } catch {
      unreadable ??= kernel;
    }
  }
  return { unreadable };
}

/**
 * Is this a statically linked ELF executable (no PT_INTERP program header)? Debian's `busybox`
 * package installs a dynamic /bin/busybox, which cannot run in a guest without a libc.
 */
function isStaticElf(path: string): boolean {
  const elf = readFileSync(path);
  // ELF64 little-endian header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38.
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (elf.readUInt32LE(phoff + i * phentsize) === 3 /* PT_INTERP */) return false;
  return true;
}

/**
 * Where the tools are, or an Error naming the Debian packages to install. A machine that lacks them
 * is a set-up mistake (.ci/run installs them), not a reason to skip.
 */
export function findVmTools(): VmTools {
  const { kernel, initrd, unreadable } = kernelPair();
  const found: Partial<VmTools> = {
    qemu: firstExisting(['/usr/bin/qemu-system-x86_64', '/usr/local/bin/qemu-system-x86_64']),
    kernel,
    initrd,
    // The static build: the guest has no shared libraries.
    busybox: firstExisting(['/bin/busybox', '/usr/bin/busybox']),
    mkfs: firstExisting(['/usr/sbin/mkfs.ext4', '/sbin/mkfs.ext4']),
    debugfs: firstExisting(['/usr/sbin/debugfs', '/sbin/debugfs']),
    e2fsck: firstExisting(['/usr/sbin/e2fsck', '/sbin/e2fsck']),
  };
  if (found.busybox && !isStaticElf(found.busybox)) found.busybox = undefined;
  if (unreadable)
    throw new Error(`booting a VM needs to read ${unreadable} and its initrd, which this user cannot: run the tests as a user who can, or make them readable`);
  const missing = (Object.keys(WHICH_PACKAGE) as (keyof VmTools)[]).filter((k) => !found[k]);
  if (missing.length) {
    const pkgs = [...new Set(missing.map((k) => WHICH_PACKAGE[k]))];
    throw new Error(
      `booting a VM needs ${missing.join(', ')}: install ${pkgs.join(', ')} (apt-get install qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs, as .ci/run does)`,
    );
  }
  return found as VmTools;
}

/** Does qemu start with this accelerator? (A machine with no devices, quit at once from the monitor.) */
function accelWorks(qemu: string, accel: Accel): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn(qemu, ['-accel', accel, '-machine', 'none', '-nodefaults', '-display', 'none', '-monitor', 'stdio'], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', () => resolve(false));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve(code === 0);
    });
    child.stdin.end('quit\n');
  });
}

/** How long a guest under KVM may take to reach its "no root" panic before KVM counts as unusable here. */
const KVM_PROBE_MS = 20_000;

/** The machine and firmware a test will boot (a UEFI test: q35 and OVMF), for the KVM probe to boot the same. */
export interface ProbeMachine {
  /** OVMF's code (pflash unit 0, read-only) and a variables template (copied: unit 1 is written). */
  uefi?: { code: string; varsTemplate: string };
}

/**
 * Does a guest actually run under KVM here? Some hosts (nested virtualisation) expose a /dev/kvm
 * with which qemu starts, yet a real guest does not run: SeaBIOS's kernel boot hangs after "Booting
 * from ROM...", OVMF stops with "KVM internal error. Suberror: 1 ... emulation failure" (seen on
 * 2026-12-06). So the probe boots the tests' kernel itself, with no initrd and no root disk: it must
 * print its "Kernel panic" (no root to mount) and qemu exit (panic=-1 with -no-reboot) within
 * KVM_PROBE_MS — about a second when KVM works.
 */
async function kvmRunsGuest(tools: VmTools, machine: ProbeMachine): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'vmseal-kvm-probe-'));
  try {
    const firmware: string[] = [];
    if (machine.uefi) {
      const vars = join(dir, 'vars.fd');
      await copyFile(machine.uefi.varsTemplate, vars);
      firmware.push(
        ...['-machine', 'q35'],
        ...['-drive', `if=pflash,unit=0,format=raw,readonly=on,file=${driveValue(machine.uefi.code)}`],
        ...['-drive', `if=pflash,unit=1,format=raw,file=${driveValue(vars)}`],
      );
    }
    const args = [
      ...['-accel', 'kvm', '-m', machine.uefi ? '512' : '256', '-nographic', '-nodefaults', '-serial', 'stdio', '-no-reboot'],
      ...firmware,
      ...['-kernel', tools.kernel, '-append', 'console=ttyS0 panic=-1'],
    ];
    return await new Promise<boolean>((resolve) => {
      const child = spawn(tools.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      const keep = (d: Buffer) => {
        out = (out + String(d)).slice(-64 * 1024);
      };
      child.stdout.on('data', keep);
      child.stderr.on('data', keep);
      const timer = setTimeout(() => child.kill('SIGKILL'), KVM_PROBE_MS);
      child.on('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve(code === 0 && out.includes('Kernel panic'));
      });
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * KVM when /dev/kvm runs a real guest here (the same machine and firmware as the test's), else TCG
 * (emulation, ~15 s for this guest); null if qemu starts with neither.
 */
export async function probeAccel(tools: VmTools, machine: ProbeMachine = {}): Promise<Accel | null> {
  if (existsSync('/dev/kvm') && (await accelWorks(tools.qemu, 'kvm'))) {
    if (await kvmRunsGuest(tools, machine)) return 'kvm';
    console.warn('vm: /dev/kvm is present but a guest does not run under KVM here: the VM tests use TCG (emulation)');
  }
  return (await accelWorks(tools.qemu, 'tcg')) ? 'tcg' : null;
}

export interface GuestImage {
  /** The raw ext4 image. */
  path: string;
  /** SHA-256 (hex) of /host.bin, the file the host put in the image for the guest to read. */
  hostSha256: string;
}

// busybox sh. Every command by full path: the image has no /bin/sh or links. The guest sees its
// disk as it is served, so this text is also a plaintext marker that must not appear in ciphertext.
// `set -e`: the marker is printed only if every step worked; otherwise init dies, the kernel panics
// and qemu exits without it.
const INIT = `#!/bin/busybox sh
set -e
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -o remount,rw /
cd /
$bb sha256sum host.bin > /host.sha256
$bb dd if=/dev/urandom of=/written.bin bs=1M count=8 2>/dev/null
$bb sha256sum written.bin > /written.sha256
$bb sync
$bb mount -o remount,ro /
echo ${GUEST_DONE}
$bb poweroff -f
`;

/** Make the guest's ext4 image (raw) at `path`: busybox, /init, and 4 MiB of host data to read. */
export async function makeGuestImage(tools: VmTools, path: string, sizeMiB = 128): Promise<GuestImage> {
  const root = await mkdtemp(join(dirname(path), 'guest-root-'));
  try {
    // Mount points: Debian's initramfs moves its /dev, /run, /sys and /proc onto them.
    for (const d of ['bin', 'proc', 'sys', 'dev', 'run']) await mkdir(join(root, d));
    await copyFile(tools.busybox, join(root, 'bin', 'busybox'));
    await chmod(join(root, 'bin', 'busybox'), 0o755);
    await writeFile(join(root, 'init'), INIT, { mode: 0o755 });
    const hostData = randomBytes(4 * 1024 * 1024);
    await writeFile(join(root, 'host.bin'), hostData);
    await writeFile(path, '');
    await truncate(path, sizeMiB * 1024 * 1024);
    await execFileP(tools.mkfs, ['-q', '-F', '-d', root, path]);
    return { path, hostSha256: createHash('sha256').update(hostData).digest('hex') };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

export interface VmRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Serial console and qemu's own messages, for failure messages. */
  console: string;
  /** qemu was killed because it ran past the timeout. */
  timedOut: boolean;
}

// qemu processes still running: killed by killRunningVms() (a test's afterAll) or, at the latest,
// when the test process exits, so that a failed or interrupted test leaves no VM behind.
const running = new Set<ChildProcess>();
process.on('exit', () => killRunningVms());

/** SIGKILL every VM bootFromNbd started that has not exited yet. */
export function killRunningVms(): void {
  for (const child of running) child.kill('SIGKILL');
}

/** qemu's -drive option syntax: a comma inside a value is written twice. */
export function driveValue(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * Boot the guest with `uri` (an NBD URI qemu understands: nbd://…, nbd+unix:///NAME?socket=…) as
 * its virtio root disk and wait until qemu exits, killing it after `timeoutMs`. `extraArgs` go
 * before the kernel (a machine type, firmware drives); `memoryMiB`: a UEFI boot needs 512 (OVMF keeps
 * part of 256 MiB, and the kernel then runs out of memory unpacking Debian's initrd).
 */
export function bootFromNbd(
  tools: VmTools,
  accel: Accel,
  uri: string,
  timeoutMs = 180_000,
  options: { extraArgs?: string[]; memoryMiB?: number } = {},
): Promise<VmRun> {
  const args = [
    ...['-accel', accel, '-m', String(options.memoryMiB ?? 256), '-nographic', '-nodefaults', '-serial', 'stdio', '-no-reboot'],
    ...(options.extraArgs ?? []),
    ...['-kernel', tools.kernel, '-initrd', tools.initrd],
    ...['-append', 'root=/dev/vda rw init=/init console=ttyS0 quiet panic=-1'],
    // cache=none: the guest's writes go to the server as they are issued, its flushes as FLUSH.
    ...['-drive', `file=${driveValue(uri)},format=raw,if=virtio,cache=none`],
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(tools.qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let out = '';
    const keep = (d: Buffer) => {
      out += String(d);
      if (out.length > 256 * 1024) out = out.slice(-128 * 1024);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      running.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, signal, console: out, timedOut });
    });
  });
}

/** The last lines of a console, for an assertion message. */
export function consoleTail(run: VmRun, lines = 30): string {
  return run.console.split('\n').slice(-lines).join('\n');
}

/** The content of a file of an ext4 image, read by debugfs (e2fsprogs) without mounting it. */
export async function readExt4File(tools: VmTools, image: string, path: string): Promise<Buffer> {
  const { stdout } = await execFileP(tools.debugfs, ['-R', `cat ${path}`, image], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** `e2fsck -fn`: a full, read-only check. Exit 0 means no error found. */
export async function e2fsckReadOnly(tools: VmTools, image: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await execFileP(tools.e2fsck, ['-fn', image]);
    return { code: 0, output: stdout + stderr };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, output: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

/** What the guest left on its disk, checked against the host's own hashes. */
export interface GuestResult {
  /** /written.sha256 as the guest wrote it, and the hash of /written.bin computed here. */
  written: { guestSha256: string; hostSha256: string; size: number };
  /** /host.sha256 as the guest computed it (should be the image's hostSha256). */
  hostFileSeenByGuest: string;
}

function hashOf(line: string): string {
  return line.trim().split(/\s+/)[0] ?? '';
}

export async function readGuestResult(tools: VmTools, rawImage: string): Promise<GuestResult> {
  const written = await readExt4File(tools, rawImage, '/written.bin');
  return {
    written: {
      guestSha256: hashOf(String(await readExt4File(tools, rawImage, '/written.sha256'))),
      hostSha256: createHash('sha256').update(written).digest('hex'),
      size: written.length,
    },
    hostFileSeenByGuest: hashOf(String(await readExt4File(tools, rawImage, '/host.sha256'))),
  };
}
