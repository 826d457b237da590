/**
 * The manifest of a qemu VM folder, `vmseal-vm.json`: what a `.vmx` is to a VMware VM — its disks,
 * its UEFI variables file and its vTPM state folder, and the KeySafe of the vTPM's state key. Schema
 * (docs/vm.md, "qemu VM folders"):
 *
 *   {
 *     "format": "vmseal-vm",          required, exactly this
 *     "version": 1,                   required; a newer version is refused
 *     "name": "web1",                 optional, [A-Za-z0-9._-]{1,64}
 *     "disks": [{ "file": "disk0.vmdk" }, …],          optional, at most 256, files unique
 *     "uefiVars": { "file": "OVMF_VARS.fd" },          optional
 *     "tpm": { "state": "tpm", "keySafe": "vmware:key/…" }   optional; keySafe is written by vmseal
 *   }
 *
 * Every path is relative to the folder and stays inside it (no absolute path, no `..`). Unknown
 * fields are refused (a typo would otherwise silently drop a disk from the VM).
 */
import { readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { describeValue } from '../errors.js';
import { KEYSAFE_LIMITS } from '../keys/index.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { VmError } from './errors.js';

export const MANIFEST_NAME = 'vmseal-vm.json';
export const MANIFEST_FORMAT = 'vmseal-vm';
export const MANIFEST_VERSION = 1;
/** A manifest is a few hundred bytes; anything this big is not one (and is not read into memory). */
export const MAX_MANIFEST_BYTES = 1024 * 1024;
export const MAX_MANIFEST_DISKS = 256;
const MAX_PATH = 4096;

export interface VmManifest {
  format: typeof MANIFEST_FORMAT;
  version: number;
  name?: string;
  disks: Array<{ file: string }>;
  uefiVars?: { file: string };
  tpm?: { state: string; keySafe?: string };
}

function manifestError(file: string, what: string, cause?: unknown): VmError {
  return new VmError('ERR_VM_MANIFEST', `${file}: ${what}`, { file, ...(cause !== undefined ? { cause } : {}) });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(obj: Record<string, unknown>, allowed: readonly string[], where: string, file: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) {
      const shown = /^[A-Za-z0-9._-]{1,64}$/.test(k) ? `"${k}"` : 'a field';
      throw manifestError(file, `${where} has an unknown field ${shown} (allowed: ${allowed.join(', ')})`);
    }
  }
}

/** A path inside the VM folder: relative, no `..`, no NUL, not empty. */
function folderPath(v: unknown, where: string, file: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_PATH) throw manifestError(file, `${where} must be a relative path, not ${describeValue(v)}`);
  if (v.includes('\0') || isAbsolute(v) || normalize(v).split(/[\\/]/).includes('..')) {
    throw manifestError(file, `${where} must be a path inside the VM folder (relative, without ..)`);
  }
  return v;
}

/** Check a parsed manifest against the schema; `file` names it in messages. */
export function validateManifest(value: unknown, file: string): VmManifest {
  if (!isRecord(value)) throw manifestError(file, `the manifest must be a JSON object, not ${describeValue(value)}`);
  onlyKeys(value, ['format', 'version', 'name', 'disks', 'uefiVars', 'tpm'], 'the manifest', file);
  if (value.format !== MANIFEST_FORMAT) throw manifestError(file, `"format" must be "${MANIFEST_FORMAT}"`);
  const version = value.version;
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) throw manifestError(file, `"version" must be ${MANIFEST_VERSION}`);
  if (version > MANIFEST_VERSION) throw manifestError(file, `version ${version} is newer than this vmseal reads (${MANIFEST_VERSION}): use a newer vmseal`);
  const out: VmManifest = { format: MANIFEST_FORMAT, version, disks: [] };
  if (value.name !== undefined) {
    if (typeof value.name !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(value.name)) throw manifestError(file, '"name" must be 1 to 64 of A-Z a-z 0-9 . _ -');
    out.name = value.name;
  }
  if (value.disks !== undefined) {
    if (!Array.isArray(value.disks) || value.disks.length > MAX_MANIFEST_DISKS)
      throw manifestError(file, `"disks" must be an array of at most ${MAX_MANIFEST_DISKS} entries`);
    const seen = new Set<string>();
    value.disks.forEach((d: unknown, i) => {
      if (!isRecord(d)) throw manifestError(file, `disks[${i}] must be an object {"file": …}`);
      onlyKeys(d, ['file'], `disks[${i}]`, file);
      const f = folderPath(d.file, `disks[${i}].file`, file);
      if (seen.has(normalize(f))) throw manifestError(file, `disks[${i}].file names a disk listed before`);
      seen.add(normalize(f));
      out.disks.push({ file: f });
    });
  }
  if (value.uefiVars !== undefined) {
    if (!isRecord(value.uefiVars)) throw manifestError(file, '"uefiVars" must be an object {"file": …}');
    onlyKeys(value.uefiVars, ['file'], '"uefiVars"', file);
    out.uefiVars = { file: folderPath(value.uefiVars.file, 'uefiVars.file', file) };
  }
  if (value.tpm !== undefined) {
    const t = value.tpm;
    if (!isRecord(t)) throw manifestError(file, '"tpm" must be an object {"state": …}');
    onlyKeys(t, ['state', 'keySafe'], '"tpm"', file);
    out.tpm = { state: folderPath(t.state, 'tpm.state', file) };
    if (t.keySafe !== undefined) {
      if (typeof t.keySafe !== 'string' || t.keySafe.length === 0 || t.keySafe.length > KEYSAFE_LIMITS.maxLength) {
        throw manifestError(file, `tpm.keySafe must be a KeySafe string (vmware:key/…), not ${describeValue(t.keySafe)}`);
      }
      out.tpm.keySafe = t.keySafe;
    }
  }
  return out;
}

/** The manifest file of VM folder `dir`. */
export function manifestPath(dir: string): string {
  return join(dir, MANIFEST_NAME);
}

/** A path of the manifest resolved against its folder (checked to stay inside it). */
export function resolveInFolder(dir: string, relative: string): string {
  const root = resolve(dir);
  const full = resolve(root, relative);
  if (full !== root && !full.startsWith(root + sep)) throw manifestError(manifestPath(dir), `${relative} is outside the VM folder`);
  return full;
}

/** Read and validate `DIR/vmseal-vm.json`. */
export async function readManifest(dir: string): Promise<VmManifest> {
  const file = manifestPath(dir);
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw manifestError(file, 'is not a regular file');
    if (st.size > MAX_MANIFEST_BYTES) throw manifestError(file, `is ${st.size} bytes, more than a manifest can be (${MAX_MANIFEST_BYTES})`);
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof VmError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw manifestError(
        file,
        `no manifest: a qemu VM folder is described by ${MANIFEST_NAME}, e.g. {"format": "${MANIFEST_FORMAT}", "version": 1, "disks": [{"file": "disk.vmdk"}], "tpm": {"state": "tpm"}}`,
        err,
      );
    }
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw manifestError(file, `is not valid JSON (${(err as Error).message})`, err);
  }
  return validateManifest(parsed, file);
}

/** Write `DIR/vmseal-vm.json` atomically (keeping its mode if it exists, else 0600). */
export async function writeManifest(dir: string, manifest: VmManifest): Promise<void> {
  const file = manifestPath(dir);
  const checked = validateManifest(manifest, file);
  const exists = await stat(file).then(
    () => true,
    () => false,
  );
  await writeFileAtomic(file, Buffer.from(`${JSON.stringify(checked, null, 2)}\n`), exists ? 'keep' : 0o600);
}
