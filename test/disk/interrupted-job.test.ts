// ERR_INTERRUPTED_JOB names the job the journal beside the disk records, and the one right action
// for it (`vmseal resume DISK`) — not "run the same command again", which is wrong for a snapshot
// commit or a rollback. (The commit journal's case, from a real killed commit:
// test/serve/chain-commit-crash.test.ts.)
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk } from '../../src/disk/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => ({ dir, cleanup } = tempDir()));
afterEach(() => cleanup());

/** A journal's first bytes as src/pipeline/journal.ts writes them: magic, u32 length, JSON header. */
function inPlaceJournal(operation: string): Buffer {
  const json = Buffer.from(JSON.stringify({ operation, chunkSize: 1 << 20 }), 'utf8');
  const n = Buffer.alloc(4);
  n.writeUInt32LE(json.length);
  return Buffer.concat([Buffer.from('VMSJRNL2', 'ascii'), n, json, Buffer.alloc(32)]);
}

async function refusal(journal: Buffer): Promise<string> {
  const disk = join(dir, 'vm.vmdk');
  await (await createDisk(disk, { capacity: 1 << 20 })).close();
  writeFileSync(`${disk}.vmseal-journal`, journal);
  const err = (await openDisk(disk).then(
    () => undefined,
    (e: unknown) => e,
  )) as { code?: string; message: string };
  expect(err?.code).toBe('ERR_INTERRUPTED_JOB');
  expect(err.message).toContain(`vmseal resume ${disk}`);
  expect(err.message).not.toMatch(/same command again/);
  return err.message;
}

describe('ERR_INTERRUPTED_JOB', () => {
  it.each([
    ['encrypt-in-place', 'interrupted encryption in place'],
    ['rekey-deep-in-place', 'interrupted deep rekey in place'],
    ['restore-over', 'interrupted rollback'],
  ])('names the in-place job %s', async (operation, words) => {
    expect(await refusal(inPlaceJournal(operation))).toContain(words);
  });

  it('names a snapshot commit by its journal', async () => {
    expect(await refusal(Buffer.concat([Buffer.from('VMSCMIT1', 'ascii'), Buffer.alloc(64)]))).toContain('interrupted snapshot commit');
  });

  it('says "in-place job", and nothing of the file, for a journal it cannot read', async () => {
    const message = await refusal(
      Buffer.concat([Buffer.from('VMSJRNL2', 'ascii'), Buffer.from([0xff, 0xff, 0xff, 0x7f]), Buffer.from('{"operation":"<script>"')]),
    );
    expect(message).toContain('interrupted in-place job');
    expect(message).not.toContain('script');
  });
});
