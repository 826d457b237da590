// The .vmx on disk: rewritten whole or not at all, with its mode, under vmseal's lock, never while
// VMware runs the VM.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { acquireFileLock, lockRecordPathFor } from '../../src/util/lock.js';
import { decryptVmxFile, encryptVmxFile, findVmx } from '../../src/vm/vmx-io.js';
import { tempDir } from '../disk/helpers.js';

const PLAIN = '.encoding = "UTF-8"\r\ndisplayName = "io"\r\nmemsize = "128"\r\n';
const LOCKER = { kind: 'passphrase' as const, passphrase: 'pw', kdf: 'workstation' as const, rounds: 1000 };

let tmp: ReturnType<typeof tempDir>;
let vmx: string;
beforeAll(() => {
  tmp = tempDir('vmseal-vmx-io-');
  vmx = join(tmp.dir, 'io.vmx');
  writeFileSync(vmx, PLAIN);
  chmodSync(vmx, 0o604);
});
afterAll(() => tmp.cleanup());

describe('encryptVmxFile / decryptVmxFile', () => {
  it('replace the file with its mode kept and leave no temporary or lock file behind', async () => {
    expect(await encryptVmxFile(tmp.dir, { lockers: [LOCKER] })).toEqual({ vmx });
    expect(statSync(vmx).mode & 0o777).toBe(0o604);
    expect(readFileSync(vmx, 'latin1')).toContain('encryption.data');
    const r = await decryptVmxFile(vmx, { passphrase: 'pw' });
    expect(r).toMatchObject({ vmx, holdsDiskKey: false, unlockedBy: { kind: 'passphrase' } });
    expect(readFileSync(vmx, 'latin1')).toBe(PLAIN);
    expect(statSync(vmx).mode & 0o777).toBe(0o604);
    expect(readdirSync(tmp.dir)).toEqual(['io.vmx']);
  });

  it('a failure (wrong passphrase, bad locker) changes nothing', async () => {
    await encryptVmxFile(vmx, { lockers: [LOCKER] });
    const before = readFileSync(vmx);
    await expect(decryptVmxFile(vmx, { passphrase: 'wrong' })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    await expect(encryptVmxFile(vmx, { lockers: [LOCKER] })).rejects.toMatchObject({ code: 'ERR_VMX_ENCRYPTED', file: vmx });
    expect(readFileSync(vmx).equals(before)).toBe(true);
    await decryptVmxFile(vmx, { passphrase: 'pw' });
    await expect(encryptVmxFile(vmx, { lockers: [{ kind: 'passphrase', passphrase: '' }] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    expect(readFileSync(vmx, 'latin1')).toBe(PLAIN);
    expect(readdirSync(tmp.dir)).toEqual(['io.vmx']);
  });

  it('refuse while another process holds the lock of the .vmx, or VMware its lock folder', async () => {
    const held = await acquireFileLock(lockRecordPathFor(vmx), { mode: 'exclusive', record: { operation: 'test', tool: 'test' } });
    try {
      await expect(encryptVmxFile(vmx, { lockers: [LOCKER] })).rejects.toMatchObject({ code: 'ERR_VMX_BUSY' });
    } finally {
      held.release();
    }
    mkdirSync(`${vmx}.lck`);
    try {
      await expect(encryptVmxFile(vmx, { lockers: [LOCKER] })).rejects.toMatchObject({
        code: 'ERR_VMX_BUSY',
        message: `${vmx} is in use by VMware (the lock folder ${vmx}.lck exists): power off the virtual machine first`,
      });
    } finally {
      rmdirSync(`${vmx}.lck`);
    }
    expect(readFileSync(vmx, 'latin1')).toBe(PLAIN);
  });

  it('findVmx takes a .vmx file as it is and refuses a missing path', async () => {
    expect(await findVmx(vmx)).toBe(vmx);
    await expect(findVmx(join(tmp.dir, 'missing'))).rejects.toMatchObject({ code: 'ERR_VMX_NOT_FOUND' });
    await expect(findVmx('' as string)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
