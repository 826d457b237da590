import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MiB = 1024 * 1024;

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vmseal-vmdk-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Deterministic data with zero stretches (some whole grains zero, some partial). */
export function patternData(size: number, seed = 1): Buffer {
  const buf = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, Math.min(i, size - 4));
  }
  // Zero a whole MiB, and a partial grain region.
  if (size > 2 * MiB) buf.fill(0, MiB, 2 * MiB);
  if (size > 3 * MiB) buf.fill(0, 3 * MiB + 1000, Math.min(size, 3 * MiB + 70000));
  return buf;
}

export function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function tryRun(cmd: string, args: string[]): { status: number | null; stdout: string; stderr: string; signal: NodeJS.Signals | null } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  // Never an empty failure message: a spawn error (EAGAIN/ENOMEM on a loaded machine) or a signal leaves
  // no output of the tool itself, so say what happened instead.
  let stderr = r.stderr ?? '';
  if (r.error) stderr += `\n${cmd}: could not run: ${r.error.message}`;
  if (r.signal) stderr += `\n${cmd}: killed by ${r.signal}`;
  return { status: r.status, stdout: r.stdout ?? '', stderr, signal: r.signal };
}

export function qemuInfo(path: string): { 'virtual-size': number; format: string; 'format-specific'?: { data?: { 'create-type'?: string } } } {
  return JSON.parse(run('qemu-img', ['info', '--output=json', path]));
}

/** vmdkinfo's reported media size in bytes. */
export function vmdkinfoSize(path: string): number {
  const out = run('vmdkinfo', [path]);
  const m = /Media size\s*:.*?\((\d+) bytes\)/.exec(out) ?? /Media size\s*:\s*(\d+)/.exec(out);
  if (!m) throw new Error(`vmdkinfo output has no media size:\n${out}`);
  return Number(m[1]);
}

export function hasTool(cmd: string): boolean {
  return spawnSync(cmd, ['--help'], { stdio: 'ignore' }).error === undefined;
}
