import { open, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { expected } from '../errors.js';
import type { LockerInfo, UnlockedBy } from '../keys/index.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { readFully } from '../util/file-io.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';
import { decryptVmx, encryptVmx, VMX_KEYSAFE_KEY, type DecryptVmxOptions, type EncryptVmxOptions } from './vmx-crypt.js';
import { VmError } from './errors.js';
import { VmxFile, VMX_LIMITS } from './vmx-file.js';

/**
 * The .vmx on disk: finding it in a VM folder, reading it with a bound, and rewriting it in place —
 * under vmseal's lock of the file (src/util/lock.ts), refused while VMware runs the VM (its lock
 * folder `<name>.vmx.lck`), written aside and renamed over the old file (src/util/atomic-file.ts)
 * with the old file's mode, so that a crash leaves the old .vmx or the new one, never a mix.
 */

/** The .vmx of `dirOrFile`: the file itself, or the one .vmx (any letter case) in the folder. */
export async function findVmx(dirOrFile: string): Promise<string> {
  if (typeof dirOrFile !== 'string' || dirOrFile.length === 0)
    throw new VmError('ERR_INVALID_ARGUMENT', expected('a path', 'the VM folder or .vmx', dirOrFile));
  const st = await stat(dirOrFile).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new VmError('ERR_VMX_NOT_FOUND', `${dirOrFile} does not exist`, { file: dirOrFile });
    throw err;
  });
  if (!st.isDirectory()) return dirOrFile;
  const found: string[] = [];
  for (const e of await readdir(dirOrFile, { withFileTypes: true })) if (e.isFile() && /\.vmx$/i.test(e.name)) found.push(e.name);
  if (found.length === 1) return join(dirOrFile, found[0]!);
  throw new VmError(
    'ERR_VMX_NOT_FOUND',
    found.length === 0
      ? `the folder ${dirOrFile} holds no .vmx file`
      : `the folder ${dirOrFile} holds ${found.length} .vmx files (${found.sort().join(', ')}); name the one to use`,
    { file: dirOrFile },
  );
}

/** Read a .vmx, refusing a file over VMX_LIMITS.maxBytes before reading it. */
export async function readVmxFile(path: string): Promise<Buffer> {
  // Not a FIFO or a device: opening one would block, reading it might never end.
  if (!(await stat(path)).isFile()) throw new VmError('ERR_VMX_FORMAT', `${path} is not a regular file`, { file: path });
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    if (size > VMX_LIMITS.maxBytes) {
      throw new VmError('ERR_VMX_FORMAT', `${path} is ${size} bytes; a .vmx of at most ${VMX_LIMITS.maxBytes} bytes is accepted`, { file: path });
    }
    const buf = Buffer.alloc(size);
    const n = await readFully(fh, buf, 0);
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}

/** Take vmseal's exclusive lock of a .vmx for a rewrite, after checking that VMware does not run the VM. */
async function lockVmx(path: string, operation: string): Promise<FileLockHandle> {
  const vmware = `${path}.lck`;
  if (
    await stat(vmware).then(
      (s) => s.isDirectory(),
      () => false,
    )
  ) {
    throw new VmError('ERR_VMX_BUSY', `${path} is in use by VMware (the lock folder ${vmware} exists): power off the virtual machine first`, { file: path });
  }
  try {
    return await acquireFileLock(lockRecordPathFor(path), { mode: 'exclusive', record: { operation, tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY')
      throw new VmError('ERR_VMX_BUSY', `${path} is ${err.message}`, { file: path, cause: err });
    throw err;
  }
}

/** Rewrite the .vmx `path` under its lock: `fn` maps the bytes read to the bytes written (atomically, mode kept). */
export async function rewriteVmxFile<T>(path: string, operation: string, fn: (bytes: Buffer) => Promise<{ bytes: Buffer; result: T }>): Promise<T> {
  const lock = await lockVmx(path, operation);
  try {
    const { bytes, result } = await fn(await readVmxFile(path));
    await writeFileAtomic(path, bytes, 'keep');
    return result;
  } finally {
    lock.release();
  }
}

export interface EncryptVmxFileResult {
  /** The .vmx that was encrypted. */
  vmx: string;
}

/** Encrypt the .vmx of a VM folder (or the .vmx named) in place. Errors as encryptVmx, plus ERR_VMX_NOT_FOUND, ERR_VMX_BUSY. */
export async function encryptVmxFile(dirOrFile: string, options: EncryptVmxOptions): Promise<EncryptVmxFileResult> {
  const vmx = await findVmx(dirOrFile);
  return rewriteVmxFile(vmx, 'vm encrypt', async (plain) => {
    const bytes = await encryptVmx(plain, options).catch((err: unknown) => {
      throw withFile(err, vmx);
    });
    return { bytes, result: { vmx } };
  });
}

export interface DecryptVmxFileResult {
  vmx: string;
  unlockedBy: UnlockedBy;
  lockers: LockerInfo[];
  /**
   * The plain .vmx holds `dataFileKey`, the key of disks VMware Workstation encrypted itself: anyone
   * who can read the .vmx can now read those disks.
   */
  holdsDiskKey: boolean;
}

/** Decrypt the .vmx of a VM folder (or the .vmx named) in place. Errors as decryptVmx, plus ERR_VMX_NOT_FOUND, ERR_VMX_BUSY. */
export async function decryptVmxFile(dirOrFile: string, options: DecryptVmxOptions): Promise<DecryptVmxFileResult> {
  const vmx = await findVmx(dirOrFile);
  return rewriteVmxFile(vmx, 'vm decrypt', async (encrypted) => {
    const r = await decryptVmx(encrypted, options, vmx);
    const holdsDiskKey = VmxFile.parse(r.plain, vmx).has('dataFileKey');
    return { bytes: r.plain, result: { vmx, unlockedBy: r.unlockedBy, lockers: r.lockers, holdsDiskKey } };
  });
}

/** The KeySafe text of an encrypted .vmx file (to find the providers it names), or undefined for a plain one. */
export async function vmxKeySafe(vmx: string): Promise<string | undefined> {
  return VmxFile.parse(await readVmxFile(vmx), vmx)
    .rawBytes(VMX_KEYSAFE_KEY)
    ?.toString('latin1');
}

/** A VmError from encryptVmx names no file (it has only bytes): name it. */
function withFile(err: unknown, file: string): unknown {
  if (err instanceof VmError && err.file === undefined) {
    return new VmError(err.code, err.message.replace(/the \.vmx/g, file), { file, line: err.line, cause: err });
  }
  return err;
}
