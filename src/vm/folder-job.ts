/**
 * The journal of a VM folder job (`vm encrypt DIR`, `vm decrypt DIR`): one small JSON file,
 * `DIR/.vmseal-vm-job`, that lists the job's steps in order and which are done. It is written
 * atomically (aside, fsynced, renamed, folder fsynced) before the first step and after each step,
 * and removed when the last step is done. Each disk step has its own journal in the pipeline (an
 * in-place encryption's `<disk>.vmseal-journal`, a decryption's staging folder): this file only
 * says which files the job covers, in which order, under which KEK, and how far it got.
 *
 *   {
 *     "format": "vmseal-vm-job", "version": 1,
 *     "operation": "encrypt" | "decrypt",
 *     "started": "<ISO time>",
 *     "kek": { "providerId": "local", "keyId": "…" },      the VM's (new) KEK (a reference, no key)
 *     "recoveryPassphrase": true,                          encrypt: the first run had recovery-passphrase lockers
 *     "kekPending": { "providerId": "local", "name": "vmseal-vm-kek-<uuid>" },
 *                                                      encrypt, rekey: a new KEK about to be made under this
 *                                                      name (pending-kek.ts); replaced by "kek" once made
 *     "steps": [ { "kind": "disk" | "state" | "config", "file": "<path>", "done": false }, … ]
 *   }
 *
 * A step's file is relative to DIR, or absolute for a disk the .vmx names outside the folder.
 *
 * Nothing in it is secret. A step is also idempotent on its own (an encrypted file is not encrypted
 * twice), so a crash between a step's end and the file's update only repeats a check.
 */
import { readFile, stat, unlink } from 'node:fs/promises';
import { isAbsolute, join, relative } from 'node:path';
import { writeFileAtomic, fsyncDir } from '../util/atomic-file.js';
import { VmError } from './errors.js';

export const VM_JOB_NAME = '.vmseal-vm-job';
export const VM_JOB_FORMAT = 'vmseal-vm-job';
export const VM_JOB_VERSION = 1;
/** A job file lists a few hundred steps at most; anything bigger is not one. */
const MAX_JOB_BYTES = 1024 * 1024;

/** `rekey-shallow` and `rekey-deep` are `vm rekey`'s (rekey.ts). */
export type VmJobOperation = 'encrypt' | 'decrypt' | 'rekey-shallow' | 'rekey-deep';
/** `tpm`: the vTPM state key in the manifest (vm rekey only). */
export type VmJobStepKind = 'disk' | 'state' | 'tpm' | 'config';

export interface VmJobStep {
  kind: VmJobStepKind;
  /** Relative to the VM folder. */
  file: string;
  done: boolean;
}

export interface VmJob {
  operation: VmJobOperation;
  started: string;
  kek?: { providerId: string; keyId: string };
  /** A new KEK to be made under `name`, recorded before it is made (pending-kek.ts); absent once `kek` is set. */
  kekPending?: { providerId: string; name: string };
  /** vm encrypt: the first run added recovery-passphrase lockers (the passphrase itself is never stored). */
  recoveryPassphrase?: boolean;
  /** vm rekey --deep: what becomes of recovery-passphrase lockers, fixed by the first run. */
  recovery?: 'keep' | 'remove';
  steps: VmJobStep[];
}

/** The command that runs (and finishes) a job of `operation`, for messages. */
export function vmJobCommand(operation: VmJobOperation): string {
  return operation === 'rekey-shallow' ? 'vm rekey --shallow' : operation === 'rekey-deep' ? 'vm rekey --deep' : `vm ${operation}`;
}

export function vmJobPath(dir: string): string {
  return join(dir, VM_JOB_NAME);
}

function damaged(dir: string, what: string): VmError {
  const file = vmJobPath(dir);
  return new VmError(
    'ERR_VM_JOB',
    `${file} is not a VM job file vmseal can read (${what}); if no vmseal job runs on this folder, check each file with \`vmseal vm info\``,
    {
      file,
    },
  );
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkStep(v: unknown, dir: string): VmJobStep {
  if (!isRecord(v)) throw damaged(dir, 'a step is not an object');
  const { kind, file, done } = v;
  if (kind !== 'disk' && kind !== 'state' && kind !== 'tpm' && kind !== 'config') throw damaged(dir, 'a step has an unknown kind');
  if (typeof file !== 'string' || file.length === 0 || file.includes('\0')) throw damaged(dir, 'a step names no file');
  if (typeof done !== 'boolean') throw damaged(dir, 'a step has no "done"');
  return { kind, file, done };
}

/** The job file of `dir`, or undefined when there is none. */
export async function readVmJob(dir: string): Promise<VmJob | undefined> {
  const file = vmJobPath(dir);
  let text: string;
  try {
    if ((await stat(file)).size > MAX_JOB_BYTES) throw damaged(dir, 'too large');
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw damaged(dir, 'not JSON');
  }
  if (!isRecord(v) || v.format !== VM_JOB_FORMAT) throw damaged(dir, 'no "format": "vmseal-vm-job"');
  if (typeof v.version !== 'number' || v.version > VM_JOB_VERSION)
    throw damaged(dir, `version ${String(v.version)}; this vmseal reads version ${VM_JOB_VERSION}`);
  if (v.operation !== 'encrypt' && v.operation !== 'decrypt' && v.operation !== 'rekey-shallow' && v.operation !== 'rekey-deep')
    throw damaged(dir, 'an unknown operation');
  if (typeof v.started !== 'string' || !Array.isArray(v.steps)) throw damaged(dir, 'no "started" or "steps"');
  const job: VmJob = { operation: v.operation, started: v.started, steps: v.steps.map((s) => checkStep(s, dir)) };
  if (v.recovery !== undefined) {
    if (v.recovery !== 'keep' && v.recovery !== 'remove') throw damaged(dir, 'a malformed "recovery"');
    job.recovery = v.recovery;
  }
  if (v.kek !== undefined) {
    const k = v.kek;
    if (!isRecord(k) || typeof k.providerId !== 'string' || typeof k.keyId !== 'string') throw damaged(dir, 'a malformed "kek"');
    job.kek = { providerId: k.providerId, keyId: k.keyId };
  }
  if (v.recoveryPassphrase !== undefined) {
    if (typeof v.recoveryPassphrase !== 'boolean') throw damaged(dir, 'a malformed "recoveryPassphrase"');
    job.recoveryPassphrase = v.recoveryPassphrase;
  }
  if (v.kekPending !== undefined) {
    const k = v.kekPending;
    if (!isRecord(k) || typeof k.providerId !== 'string' || typeof k.name !== 'string') throw damaged(dir, 'a malformed "kekPending"');
    job.kekPending = { providerId: k.providerId, name: k.name };
  }
  return job;
}

/** Write the job file atomically (mode 0600). */
export async function writeVmJob(dir: string, job: VmJob): Promise<void> {
  const body = { format: VM_JOB_FORMAT, version: VM_JOB_VERSION, ...job };
  await writeFileAtomic(vmJobPath(dir), Buffer.from(`${JSON.stringify(body, null, 2)}\n`), 0o600);
}

/** Remove the job file (the job is complete) and make the removal durable. */
export async function removeVmJob(dir: string): Promise<void> {
  await unlink(vmJobPath(dir)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await fsyncDir(dir);
}

/** A step's file as the job file records it: relative to the VM folder when inside it (a .vmx may name a disk elsewhere). */
export function stepFile(dir: string, path: string): string {
  const r = relative(dir, path);
  return r.startsWith('..') || isAbsolute(r) ? path : r;
}

/** A step's file as a path. */
export function stepPath(dir: string, step: VmJobStep): string {
  return isAbsolute(step.file) ? step.file : join(dir, step.file);
}
