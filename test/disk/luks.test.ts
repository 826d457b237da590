// vmseal's data layer is dm-crypt's aes-xts-plain64: keyed with the master key of a LUKS image that
// qemu-img made (cryptsetup dumps the key; no root or device needed), vmseal's data cipher turns
// the plaintext into exactly that image's payload.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDataCipher } from '../../src/disk/cipher.js';
import { patternBytes, tempDir } from './helpers.js';

const have = (cmd: string, args: string[]) => spawnSync(cmd, args).status === 0;
const tools = have('qemu-img', ['--version']) && have('cryptsetup', ['--version']);

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-luks-');
});
afterAll(() => tmp.cleanup());

describe.skipIf(!tools)('LUKS payload (qemu-img + cryptsetup)', () => {
  it('equals vmseal XTS of the plaintext with the LUKS master key, tweak = 512-byte sector number', async () => {
    const plain = patternBytes(1 << 20, 99);
    const raw = join(tmp.dir, 'p.raw');
    const luks = join(tmp.dir, 'p.luks');
    const keyFile = join(tmp.dir, 'kf');
    writeFileSync(raw, plain);
    writeFileSync(keyFile, 'pw');
    // qemu's PBKDF calibration fails now and then on a loaded machine ("Unable to get accurate CPU
    // usage") with a short iter-time: try again, the last time with qemu's default.
    for (const iter of ['100', '100', '2000']) {
      const r = spawnSync(
        'qemu-img',
        [
          'convert',
          '-q',
          '--object',
          'secret,id=sec0,data=pw',
          '-f',
          'raw',
          '-O',
          'luks',
          '-o',
          `key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=${iter}`,
          raw,
          luks,
        ],
        { encoding: 'utf8' },
      );
      if (r.status === 0) break;
      if (iter === '2000') throw new Error(`qemu-img could not make a LUKS image: ${r.stderr}`);
    }
    const dump = execFileSync('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', keyFile, luks], { encoding: 'utf8' });
    expect(dump).toMatch(/xts-plain64/);
    const offset = Number(/Payload offset:\s*(\d+)/.exec(dump)![1]) * 512;
    const hex = /MK dump:\s*([\s\S]*?)(?:\n\S|$)/.exec(dump)![1].replace(/[^0-9a-f]/gi, '');
    const key = Buffer.from(hex, 'hex');
    expect(key.length).toBe(64);
    const payload = readFileSync(luks).subarray(offset, offset + plain.length);
    const cipher = createDataCipher('aes-256-xts', key, 512);
    const mine = Buffer.from(plain);
    await cipher.encrypt(mine, 0);
    cipher.dispose();
    expect(mine.equals(payload)).toBe(true);
  });
});
