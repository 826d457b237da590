/**
 * The demo's sample disk: a raw image that looks like a small real disk, deterministic for a
 * given seed (so its hash is reproducible), written sparsely.
 *
 * Layout (512-byte sectors):
 *   sector 0           MBR: 446 bytes of boot-code-like bytes, disk signature at 440, one
 *                      partition entry at 446 (type 0x83 "Linux", LBA start 2048, to the end of
 *                      the disk), signature 55 AA at 510
 *   sectors 1..2047    zero (the usual alignment gap before the first partition)
 *   2048 …             the partition: a 4 KiB text "superblock", then a sequence of "files" —
 *                      text (log/config-like lines), binary (incompressible bytes, like
 *                      executables or compressed archives) — separated by never-written holes
 *                      that read as zeros (free space), about half of the disk allocated.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

export const SECTOR = 512;
const PARTITION_START_LBA = 2048;
const MiB = 1024 * 1024;

export interface SampleDiskInfo {
  path: string;
  /** Virtual size in bytes. */
  size: number;
  /** Bytes written (text + binary + metadata); the rest are holes. */
  dataBytes: number;
  textFiles: number;
  binaryFiles: number;
  holes: number;
}

/** A small deterministic PRNG (xorshift32): layout decisions only, not the binary content. */
class Prng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.state = x;
    return x;
  }
  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + (this.next() % (hi - lo + 1));
  }
}

const WORDS = (
  'kernel disk sector block inode mount volume backup restore service daemon config host guest ' +
  'network interface address route firewall user group session token request response error ' +
  'warning info debug started stopped listening connected timeout retry cache buffer page ' +
  'thread worker queue journal commit snapshot replica cluster node storage datastore virtual ' +
  'machine encrypt decrypt key policy audit report customer invoice order shipment payment'
).split(' ');

function textChunk(prng: Prng, bytes: number, fileNo: number): Buffer {
  const lines: string[] = [];
  let length = 0;
  let lineNo = 0;
  while (length < bytes) {
    const n = prng.between(4, 14);
    const words: string[] = [];
    for (let i = 0; i < n; i += 1) words.push(WORDS[prng.next() % WORDS.length]!);
    const level = ['INFO', 'WARN', 'DEBUG', 'ERROR'][prng.next() % 4];
    const line = `2024-05-${String(1 + (fileNo % 28)).padStart(2, '0')}T${String(lineNo % 24).padStart(2, '0')}:${String(prng.next() % 60).padStart(2, '0')}:00Z ${level} [file${fileNo}] ${words.join(' ')}\n`;
    lines.push(line);
    length += line.length;
    lineNo += 1;
  }
  return Buffer.from(lines.join(''), 'latin1').subarray(0, bytes);
}

/** Incompressible, deterministic bytes: AES-128-CTR keystream of a fixed key, per-file IV. */
function binaryChunk(bytes: number, fileNo: number, part: number): Buffer {
  const key = Buffer.alloc(16, 0x5a);
  const iv = Buffer.alloc(16);
  iv.writeUInt32BE(fileNo, 0);
  iv.writeUInt32BE(part, 4);
  const cipher = createCipheriv('aes-128-ctr', key, iv);
  return Buffer.concat([cipher.update(Buffer.alloc(bytes)), cipher.final()]);
}

function mbr(totalSectors: number, seed: number): Buffer {
  const s = Buffer.alloc(SECTOR);
  // Boot-code-like filler: a recognisable pattern, not zeros.
  const boot = Buffer.from('vmseal demo disk: this is not a bootable system. ', 'latin1');
  for (let i = 0; i < 440; i += 1) s[i] = boot[i % boot.length]!;
  s.writeUInt32LE(seed >>> 0, 440); // disk signature
  const entry = 446;
  s[entry] = 0x00; // not active
  s.set([0xfe, 0xff, 0xff], entry + 1); // CHS start: "use LBA"
  s[entry + 4] = 0x83; // Linux
  s.set([0xfe, 0xff, 0xff], entry + 5); // CHS end
  s.writeUInt32LE(PARTITION_START_LBA, entry + 8);
  s.writeUInt32LE(Math.min(0xffffffff, totalSectors - PARTITION_START_LBA), entry + 12);
  s[510] = 0x55;
  s[511] = 0xaa;
  return s;
}

/**
 * Write the sample disk to `path` (created or truncated). `size` must be a multiple of 1 MiB and at
 * least 4 MiB.
 */
export async function writeSampleDisk(path: string, size: number, seed = 20240501, signal?: AbortSignal): Promise<SampleDiskInfo> {
  if (!Number.isSafeInteger(size) || size < 4 * MiB || size % MiB !== 0) {
    throw new RangeError(`Expected a sample disk size that is a multiple of 1 MiB and at least 4 MiB but received ${size}`);
  }
  const prng = new Prng(seed);
  const info: SampleDiskInfo = { path, size, dataBytes: 0, textFiles: 0, binaryFiles: 0, holes: 0 };
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const write = async (buf: Buffer, pos: number): Promise<void> => {
      signal?.throwIfAborted();
      await fh.write(buf, 0, buf.length, pos);
      info.dataBytes += buf.length;
    };
    await write(mbr(size / SECTOR, seed), 0);
    let pos = PARTITION_START_LBA * SECTOR;
    const superblock = Buffer.alloc(4096);
    superblock.write(`VMSEAL-DEMO-FS v1\nblock size 4096\nsectors ${size / SECTOR}\nseed ${seed}\n`, 'latin1');
    await write(superblock, pos);
    pos += superblock.length;
    let fileNo = 0;
    // Files are 4 KiB-aligned like a file system's blocks; files and holes alternate at random
    // with sizes chosen so that about half of the disk holds data.
    while (pos < size) {
      const roll = prng.next() % 10;
      if (roll < 3) {
        const hole = prng.between(1, 20) * 256 * 1024;
        pos += hole;
        info.holes += 1;
        continue;
      }
      fileNo += 1;
      const isText = roll < 6;
      const fileSize = isText ? prng.between(1, 256) * 4096 : prng.between(16, 768) * 4096;
      const end = Math.min(size, pos + fileSize);
      for (let part = 0, at = pos; at < end; part += 1) {
        const n = Math.min(MiB, end - at);
        await write(isText ? textChunk(prng, n, fileNo) : binaryChunk(n, fileNo, part), at);
        at += n;
      }
      if (isText) info.textFiles += 1;
      else info.binaryFiles += 1;
      pos = end;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  return info;
}

/** SHA-256 of a whole file read in large chunks (the demo's round-trip check). */
export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * MiB);
    let pos = 0;
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
