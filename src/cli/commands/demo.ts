/**
 * `vmseal demo`: the main job on a sample disk, on a fresh machine, with nothing left behind:
 * make a sample disk → encrypt it with the local key provider → info → decrypt → verify by hash,
 * printing throughput at each step.
 */
import { mkdir, mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DEFAULT_CIPHER } from '../../disk/params.js';
import { KeyCache, LocalKeyProvider } from '../../keys/index.js';
import { decryptDisk, encryptDisk, inspectDisk, verifyDisk } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { CliError, usageError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import { throughputText, withHooks } from '../jobs.js';
import { formatBytes, formatDuration, type Subformat } from '../parse.js';
import { sha256File, writeSampleDisk } from '../sample-disk.js';
import { infoRows } from './info.js';

export interface DemoCliOptions {
  size: number;
  subformat: Subformat;
  keep?: string;
  home?: string;
}

/** The sample's superblock text: it must not appear anywhere in the encrypted files. */
const MARKER = Buffer.from('VMSEAL-DEMO-FS', 'latin1');

async function fileContains(path: string, needle: Buffer): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const chunk = Buffer.allocUnsafe(4 * 1024 * 1024);
    let pos = 0;
    let carry = Buffer.alloc(0);
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, pos);
      if (bytesRead === 0) return false;
      const window = Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
      if (window.includes(needle)) return true;
      carry = window.subarray(Math.max(0, window.length - needle.length + 1));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

async function prepareDir(keep: string | undefined): Promise<string> {
  if (keep === undefined) return mkdtemp(join(tmpdir(), 'vmseal-demo-'));
  const dir = resolve(keep);
  await mkdir(dir, { recursive: true });
  if ((await readdir(dir)).length > 0) throw usageError(`--keep ${dir} is not empty`, 'Give a new or empty folder');
  return dir;
}

export async function demoCommand(ctx: Ctx, opts: DemoCliOptions): Promise<void> {
  ctx.doing = 'cannot run the demo';
  if (opts.subformat !== 'monolithicSparse' && opts.subformat !== 'monolithicFlat') {
    throw usageError(`the demo encrypts to monolithicSparse or monolithicFlat, not ${opts.subformat}`);
  }
  if (opts.size % (1024 * 1024) !== 0) throw usageError('--size must be a whole number of MiB', 'e.g. --size 128M');
  const out = ctx.output;
  const dir = await prepareDir(opts.keep);
  const chosenHome = opts.home ?? (ctx.env.VMSEAL_HOME !== undefined && ctx.env.VMSEAL_HOME !== '' ? ctx.env.VMSEAL_HOME : undefined);
  const temporaryHome = chosenHome === undefined;
  const home = chosenHome !== undefined ? resolve(chosenHome) : join(dir, 'keystore');
  const plain = join(dir, 'sample.img');
  const encrypted = join(dir, 'sample-encrypted.vmdk');
  const decrypted = join(dir, 'sample-decrypted.img');
  const cache = new KeyCache();
  const provider = new LocalKeyProvider({ home });
  let ok = false;
  try {
    out.line(`vmseal demo: working in ${dir}${opts.keep === undefined ? ' (removed at the end; --keep DIR keeps it)' : ''}`);
    const homeExisted = await stat(join(home, 'keystore.json')).then(
      () => true,
      () => false,
    );
    await provider.init();
    out.line(
      temporaryHome
        ? `Keys: a temporary local keystore in ${home} (deleted with the demo; set VMSEAL_HOME or --home to use yours)`
        : `Keys: the local keystore in ${home}${homeExisted ? '' : ' (created now)'}; the demo adds one key named vmseal-demo-…`,
    );

    // 1. The sample disk.
    let t = performance.now();
    const sample = await writeSampleDisk(plain, opts.size, undefined, ctx.signal);
    const makeSeconds = (performance.now() - t) / 1000;
    out.line(
      `1. Made a ${formatBytes(sample.size)} raw sample disk: MBR partition table, ${sample.textFiles} text and ${sample.binaryFiles} binary files ` +
        `(${formatBytes(sample.dataBytes)} of data), the rest free space (holes) — ${formatDuration(makeSeconds)}`,
    );
    const plainHash = await sha256File(plain, ctx.signal);
    out.line(`   sha256 ${plainHash}`);

    // 2. Encrypt with a new key of the local provider.
    const ref = await provider.createKey({ name: `vmseal-demo-${new Date().toISOString()}` });
    const enc = await withHooks(ctx, 'encrypt', (h) =>
      encryptDisk(plain, encrypted, {
        signal: h.signal,
        onProgress: h.onProgress,
        subformat: opts.subformat,
        lockers: [{ kind: 'provider', provider, keyId: ref.keyId }],
        cache,
      }),
    );
    out.line(
      `2. Encrypted -> ${enc.output} (${enc.subformat}, ${DEFAULT_CIPHER}) with local key ${ref.keyId}: ${throughputText(enc.bytesProcessed, enc.seconds)}`,
    );

    // 3. What `vmseal info` shows, and proof that no plaintext is left in the encrypted files.
    const keys = { providers: [provider], cache };
    const info = await inspectDisk(encrypted, { keys });
    out.line('3. vmseal info:');
    out.table(infoRows(info, encrypted).map(([k, v]) => [`   ${k}`, v] as [string, string]));
    let leaked = false;
    for (const f of info.files) if (await fileContains(f, MARKER)) leaked = true;
    out.line(`   the text "${MARKER.toString('latin1')}" of the sample's superblock ${leaked ? 'IS FOUND' : 'is found nowhere'} in the encrypted files`);

    // 4. Decrypt back to raw.
    const dec = await withHooks(ctx, 'decrypt', (h) =>
      decryptDisk(encrypted, decrypted, { signal: h.signal, onProgress: h.onProgress, subformat: 'raw', keys }),
    );
    out.line(`4. Decrypted -> ${dec.output} (raw): ${throughputText(dec.bytesProcessed, dec.seconds)}`);

    // 5. Round trip: the decrypted image and the encrypted disk's content equal the original.
    const decHash = await sha256File(decrypted, ctx.signal);
    t = performance.now();
    const verify = await withHooks(ctx, 'verify', (h) => verifyDisk(encrypted, { signal: h.signal, onProgress: h.onProgress, keys, against: plain }));
    const verifySeconds = (performance.now() - t) / 1000;
    ok = decHash === plainHash && verify.ok && !leaked;
    out.line(
      `5. Round trip ${decHash === plainHash ? 'OK' : 'FAILED'}: sha256 of the decrypted image ${decHash === plainHash ? 'equals' : 'differs from'} the original's`,
    );
    out.line(`   vmseal verify --against the original: ${verify.ok ? 'OK' : 'MISMATCH'} (${throughputText(verify.bytesRead, verifySeconds)})`);
    out.result({
      ok,
      command: 'demo',
      dir,
      kept: opts.keep !== undefined,
      home,
      temporaryHome,
      keyId: ref.keyId,
      sample: { ...sample, sha256: plainHash },
      encrypt: { ...enc, rate: enc.seconds > 0 ? enc.bytesProcessed / enc.seconds : null },
      info,
      plaintextFoundInCiphertext: leaked,
      decrypt: { ...dec, rate: dec.seconds > 0 ? dec.bytesProcessed / dec.seconds : null, sha256: decHash },
      verify,
      roundTripOk: ok,
    });
    if (!ok) {
      ctx.exitCode = ExitCode.MISMATCH;
      out.error('vmseal: demo: the round trip did not reproduce the original. This is a bug in vmseal: please report it with the output above.');
    } else {
      out.line(opts.keep === undefined ? 'Done; the demo files were removed.' : `Done; the demo files are in ${dir}.`);
    }
  } finally {
    await provider.close();
    cache.clear();
    if (opts.keep === undefined) await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
  if (ctx.signal.aborted) throw new CliError('ERR_ABORTED', 'interrupted', { exitCode: ExitCode.INTERRUPTED });
}
