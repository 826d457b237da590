// Ciphertext backups (issue 11 targets), measured as a user runs them: every `vmseal backup …` and
// `cp` is a whole process spawned by this suite under /usr/bin/time (wall time from spawn to exit,
// start-up included; peak RSS of the command).
//  1. a 2 GiB encrypted monolithicFlat disk (`vmseal encrypt` of random data) in tmpfs, repository
//     in tmpfs: full `backup create` into an empty repository versus `cp` of the disk's two files
//     into a new folder, and a full `backup restore` of that point, rounds interleaved (order
//     reversed every other round), outputs deleted and `sync` run before each run, medians;
//  2. incremental: 1 % of the disk's chunks overwritten (random bytes written straight into the flat
//     extent: the backup reads ciphertext and never decrypts, so it cannot tell) and `backup create`
//     again, without a change bitmap (it reads and hashes every chunk, writes only the changed ones);
//  3. peak RSS of a full backup of the same data in a sparse 16 GiB disk (monolithicSparse), against
//     the 2 GiB disk's.
//  4. with the change bitmap: 1 % of the chunks written through a short-lived `vmseal serve` of the
//     disk (qemu-io over its Unix socket, then SIGTERM: an orderly stop leaves a clean bitmap), then
//     `backup create` (reads only the marked chunks); again 1 % written through the server, then
//     quick rollback `backup restore --over` to that point with the valid bitmap beside the disk;
//     and 1 % written straight into the flat extent with the bitmap deleted, rollback again.
//  5. the same with the 16 GiB sparse disk of 3 (2 GiB of data at its start): 1 % of its capacity's
//     chunks (164 for 16 GiB) written through `vmseal serve` at random offsets over the whole
//     capacity (most land where nothing was allocated), then `backup create` with the bitmap; the
//     reference is that disk's own full backup (3), whose time scales with its allocated data.
//  6. the process floor: `node -e 0` and `vmseal --version`, timed the same way (a CLI command
//     cannot take less), so that the incremental's ratio can be read against it.
//  7. the library, in this one long-running process: the functions the CLI calls (createBackup,
//     restoreBackup, restoreBackupOver from dist/) on the same flat disk, timed around each call
//     (no start-up, no module loading after the first round), rounds interleaved, medians: full
//     backup, incremental without and with the change bitmap, full restore, rollback with and
//     without the bitmap. The ratios against the same targets then measure the data path alone.
//     The change bitmap is still made by a short-lived `vmseal serve` process (untimed).
//
// Run: node bench/run.mjs backup [--quick]
//   BENCH_BACKUP_MIB=N: the disk's data size in MiB (default 2048; 256 with --quick), for a quick check.
//   BENCH_BACKUP_DIR=D: the folder to work in (default /dev/shm when it has room, else the temp folder).
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, statfsSync, writeSync } from 'node:fs';
import { randomFillSync, randomInt } from 'node:crypto';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { quick, report, fmtMBs } from '../lib.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const CHUNK = MiB; // the repository's chunk size (src/backup/repository.ts CHUNK_SIZE)
const BIN = fileURLToPath(new URL('../../bin/vmseal.js', import.meta.url));

const envMiB = process.env.BENCH_BACKUP_MIB;
if (envMiB !== undefined && !/^[1-9][0-9]*$/.test(envMiB)) {
  console.error(`bench backup: BENCH_BACKUP_MIB must be a positive whole number of MiB, not "${envMiB}"`);
  process.exit(2);
}
const size = (envMiB ? Number(envMiB) : quick ? 256 : 2048) * MiB;
const sparseCapacity = 8 * size; // 16 GiB for the default 2 GiB
const rounds = quick ? 3 : 5;
const incRounds = quick ? 3 : 5;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** Spawn `cmd args` under /usr/bin/time: wall seconds from spawn to exit, peak RSS (KiB), stdout. */
function run(cmd, args, env = process.env) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', cmd, ...args], { encoding: 'utf8', env, maxBuffer: 64 * MiB });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status}): ${r.stderr}`);
  return { seconds, maxRssKiB: Number(r.stderr.trim().split('\n').pop()), stdout: r.stdout };
}

const vmseal = (env, ...args) => run(process.execPath, [BIN, ...args], env);
const vmsealJson = (env, ...args) => {
  const r = vmseal(env, ...args, '--json');
  return { ...r, json: JSON.parse(r.stdout.trim().split('\n').pop()) };
};

function writeRandom(path, bytes) {
  const fd = openSync(path, 'w');
  const block = Buffer.alloc(16 * MiB);
  for (let done = 0; done < bytes; done += block.length) {
    randomFillSync(block);
    writeSync(fd, block, 0, Math.min(block.length, bytes - done), done);
  }
  closeSync(fd);
}

/** Overwrite `count` distinct whole chunks of the file at `path` (of `bytes` bytes) with random bytes. */
function changeChunks(path, bytes, count) {
  const chunks = Math.floor(bytes / CHUNK);
  const picked = new Set();
  while (picked.size < count) picked.add(randomInt(chunks));
  const fd = openSync(path, 'r+');
  const buf = Buffer.alloc(CHUNK);
  for (const i of picked) {
    randomFillSync(buf);
    writeSync(fd, buf, 0, CHUNK, i * CHUNK);
  }
  closeSync(fd);
}

/**
 * Write `count` distinct whole chunks of the disk's plaintext through a short-lived `vmseal serve`
 * (qemu-io over its Unix socket in `sockDir`, a 0700 folder), then stop it with SIGTERM: the orderly
 * stop writes the clean change bitmap beside the disk.
 */
// Each call writes its own byte pattern: a chunk picked by two calls in a row must change again, or a
// rollback to the point between them would (rightly) find it unchanged.
let serveWrites = 0;

async function serveWrite(env, disk, sockDir, bytes, count) {
  const pattern = 1 + (serveWrites++ % 255);
  const chunks = Math.floor(bytes / CHUNK);
  const picked = new Set();
  while (picked.size < count) picked.add(randomInt(chunks));
  const socket = join(sockDir, 'nbd.sock');
  const server = spawn(process.execPath, [BIN, 'serve', disk, '--socket', socket, '--control', join(sockDir, 'ctl.sock')], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => server.once('exit', (code, signal) => resolve({ code, signal })));
  let said = '';
  await new Promise((resolve, reject) => {
    const look = (b) => {
      said += b;
      if (said.includes('serving ')) resolve();
    };
    server.stdout.on('data', look);
    server.stderr.on('data', look);
    exited.then(() => reject(new Error(`vmseal serve stopped before serving: ${said}`)));
  });
  try {
    const cmds = [...picked].flatMap((i) => ['-c', `write -P ${pattern} ${i * CHUNK} ${CHUNK}`]);
    const r = spawnSync('qemu-io', ['-f', 'raw', `nbd+unix:///${basename(disk, '.vmdk')}?socket=${socket}`, ...cmds], {
      encoding: 'utf8',
      maxBuffer: 64 * MiB,
    });
    if (r.status !== 0) throw new Error(`qemu-io failed (exit ${r.status}): ${r.stderr}`);
  } finally {
    server.kill('SIGTERM');
  }
  const end = await exited;
  if (end.code !== 0) throw new Error(`vmseal serve did not stop cleanly (${end.code ?? end.signal}): ${said}`);
}

const filesOf = (dir, stem) =>
  readdirSync(dir)
    .filter((f) => f.startsWith(stem))
    .map((f) => join(dir, f));

const clean = (...paths) => {
  for (const p of paths) rmSync(p, { recursive: true, force: true });
};

const summary = (rs) => ({
  seconds: median(rs.map((r) => r.seconds)),
  min: Math.min(...rs.map((r) => r.seconds)),
  max: Math.max(...rs.map((r) => r.seconds)),
  rss: Math.max(...rs.map((r) => r.maxRssKiB)),
});

function loadNote(before, after) {
  const shared = Math.max(before, after) > cpus().length;
  return `Load average (1 min) ${before.toFixed(1)} at the start and ${after.toFixed(1)} at the end: ${
    shared
      ? 'above the core count, other work shared the machine and every figure is slower and noisier than on a quiet one.'
      : 'within the core count: the suite had the machine to itself.'
  }`;
}

function freeBytes(path) {
  try {
    const st = statfsSync(path);
    return st.bavail * st.bsize;
  } catch {
    return 0;
  }
}

/**
 * 7. The library rows: the same jobs as the process rows, each one call of the public API in this
 * process (dist/index.js, what the CLI calls), timed around the call. Every round runs all six, so a
 * slow spell of a shared machine falls on all of them; the full backup and the full restore swap
 * order every other round (the restore needs a point: in reversed rounds the previous round's).
 * A full GC before each timed call (run.mjs passes --expose-gc) keeps one job's garbage off the next.
 */
async function libraryRounds({ env, disk, flat, repo, out, sockDir, changed, rounds: n }) {
  const lib = await import('../../dist/index.js');
  const gc = globalThis.gc ?? (() => undefined);
  const timed = async (fn) => {
    gc();
    spawnSync('sync');
    const t0 = performance.now();
    const result = await fn();
    return { seconds: (performance.now() - t0) / 1000, maxRssKiB: 0, result };
  };
  const check = (what, got, want) => {
    if (got !== want) throw new Error(`library ${what}: ${got}, not ${want}`);
  };
  const jobs = {
    full: async () => {
      clean(repo);
      await lib.initRepository(repo);
      const r = await timed(() => lib.createBackup(disk, repo));
      check('full backup newChunks', r.result.newChunks, size / CHUNK);
      return r;
    },
    restore: async () => {
      clean(out);
      mkdirSync(out);
      return timed(() => lib.restoreBackup(repo, 'latest', join(out, 'disk.vmdk')));
    },
  };
  const runs = { full: [], restore: [], inc: [], bitmap: [], overBitmap: [], overNoBitmap: [] };
  for (let round = 0; round < n; round++) {
    for (const who of round % 2 ? ['restore', 'full'] : ['full', 'restore']) runs[who].push(await jobs[who]());
    clean(out);
    // Incremental without the bitmap: ciphertext changed straight in the extent, bitmap deleted.
    changeChunks(flat, size, changed);
    clean(`${disk}.vmseal-ctk`);
    const inc = await timed(() => lib.createBackup(disk, repo));
    check('incremental newChunks', inc.result.newChunks, changed);
    check('incremental bitmap used', inc.result.changeBitmap.used, false);
    runs.inc.push(inc);
    // With the bitmap: the last backup left a clean, empty one on its point; write through the server.
    await serveWrite(env, disk, sockDir, size, changed);
    const b = await timed(() => lib.createBackup(disk, repo));
    check('bitmap incremental chunksRead', b.result.chunksRead, changed);
    check('bitmap incremental newChunks', b.result.newChunks, changed);
    check('bitmap incremental bitmap used', b.result.changeBitmap.used, true);
    runs.bitmap.push(b);
    await serveWrite(env, disk, sockDir, size, changed);
    const o1 = await timed(() => lib.restoreBackupOver(repo, b.result.point, disk));
    check('rollback (bitmap) chunksWritten', o1.result.chunksWritten, changed);
    runs.overBitmap.push(o1);
    changeChunks(flat, size, changed);
    clean(`${disk}.vmseal-ctk`);
    const o2 = await timed(() => lib.restoreBackupOver(repo, b.result.point, disk));
    check('rollback (no bitmap) chunksWritten', o2.result.chunksWritten, changed);
    runs.overNoBitmap.push(o2);
    // A rollback rewrites the descriptor (a new generation): the next round's backups start afresh.
  }
  clean(repo, out);
  return runs;
}

async function main() {
  // At most: the disk, cp's copy, a repository (+ incremental chunks), a restored disk, and the raw
  // source while the disk is made: 5 × the data size, with a margin.
  const needed = 5.5 * size;
  const base = process.env.BENCH_BACKUP_DIR || (freeBytes('/dev/shm') > needed ? '/dev/shm' : tmpdir());
  if (freeBytes(base) < needed) {
    throw new Error(
      `bench backup: ${base} has ${(freeBytes(base) / GiB).toFixed(1)} GiB free, the suite needs ${(needed / GiB).toFixed(1)} GiB; free space or set BENCH_BACKUP_MIB lower`,
    );
  }
  const dir = mkdtempSync(join(base, 'vmseal-bench-backup-'));
  const loadBefore = loadavg()[0];
  try {
    const env = { ...process.env, VMSEAL_HOME: join(dir, 'home') };
    vmseal(env, 'keys', 'init');
    const raw = join(dir, 'src.raw');
    writeRandom(raw, size);

    // 3 first (its disk and repository are deleted before the others are made, to bound tmpfs use):
    // the same data at the start of a sparse disk of 8 × the capacity.
    spawnSync('truncate', ['-s', String(sparseCapacity), raw]);
    const sparseDir = join(dir, 'sparse');
    mkdirSync(sparseDir);
    const sparse = join(sparseDir, 'disk.vmdk');
    vmseal(env, 'encrypt', raw, sparse, '--subformat', 'monolithicSparse', '--format', 'raw');
    spawnSync('truncate', ['-s', String(size), raw]);
    const sockDir = join(dir, 'sock');
    mkdirSync(sockDir, { mode: 0o700 });
    const sparseRuns = [];
    const sparseRepo = join(dir, 'sparse-repo');
    for (let i = 0; i < (quick ? 1 : 2); i++) {
      clean(sparseRepo);
      vmseal(env, 'backup', 'init', sparseRepo);
      spawnSync('sync');
      const r = vmsealJson(env, 'backup', 'create', sparse, sparseRepo);
      if (r.json.newChunks !== size / CHUNK) throw new Error(`the sparse backup wrote ${r.json.newChunks} chunks, not ${size / CHUNK}`);
      sparseRuns.push(r);
    }
    // 5. The last full backup left a clean, empty bitmap on its point: each round writes 1 % of the
    // capacity's chunks through the server, and the backup reads only those (its point is the next base).
    const sparseChanged = Math.max(1, Math.round(sparseCapacity / CHUNK / 100));
    const sparseBitmap = [];
    for (let i = 0; i < incRounds; i++) {
      await serveWrite(env, sparse, sockDir, sparseCapacity, sparseChanged);
      spawnSync('sync');
      const b = vmsealJson(env, 'backup', 'create', sparse, sparseRepo);
      if (!b.json.changeBitmap?.used || b.json.chunksRead !== sparseChanged || b.json.newChunks !== sparseChanged) {
        throw new Error(
          `the sparse bitmap backup read ${b.json.chunksRead} chunks and wrote ${b.json.newChunks}, not ${sparseChanged} (${JSON.stringify(b.json.changeBitmap)})`,
        );
      }
      sparseBitmap.push(b);
    }
    clean(sparseRepo, sparseDir);

    // 6. The process floor.
    const floorNode = [];
    const floorCli = [];
    for (let i = 0; i < rounds; i++) {
      floorNode.push(run(process.execPath, ['-e', '0']));
      floorCli.push(vmseal(env, '--version'));
    }

    // 1. The flat disk; the raw source is deleted once it is made.
    const diskDir = join(dir, 'disk');
    mkdirSync(diskDir);
    const disk = join(diskDir, 'disk.vmdk');
    vmseal(env, 'encrypt', raw, disk, '--subformat', 'monolithicFlat', '--format', 'raw');
    clean(raw);
    const diskFiles = filesOf(diskDir, 'disk');
    const flat = diskFiles.find((f) => f.endsWith('-flat.vmdk'));
    if (!flat) throw new Error(`no flat extent among ${diskFiles.join(', ')}`);

    const repo = join(dir, 'repo');
    const cpDst = join(dir, 'cp');
    const out = join(dir, 'restored');
    const jobs = {
      cp: () => {
        clean(cpDst);
        mkdirSync(cpDst);
        spawnSync('sync');
        return run('cp', [...diskFiles, cpDst]);
      },
      full: () => {
        clean(repo);
        vmseal(env, 'backup', 'init', repo);
        spawnSync('sync');
        const r = vmsealJson(env, 'backup', 'create', disk, repo);
        if (r.json.newChunks !== size / CHUNK) throw new Error(`the full backup wrote ${r.json.newChunks} chunks, not ${size / CHUNK}`);
        return r;
      },
      restore: () => {
        clean(out);
        mkdirSync(out);
        spawnSync('sync');
        return vmseal(env, 'backup', 'restore', repo, 'latest', join(out, 'disk.vmdk'));
      },
    };
    const runs = { cp: [], full: [], restore: [] };
    for (let round = 0; round < rounds; round++) {
      // The restore needs a point: in reversed rounds it restores the previous round's (the same data).
      const order = round % 2 ? ['restore', 'full', 'cp'] : ['cp', 'full', 'restore'];
      for (const who of order) runs[who].push(jobs[who]());
      if (round === 0) {
        // Not timed: the restored disk's files are the disk's, byte for byte — except the line a
        // restore adds to the descriptor to continue the point's history (ddb.vmseal.restoredFrom).
        const withoutLineage = (file) => readFileSync(file, 'latin1').replace(/^ddb\.vmseal\.restoredFrom = .*\r?\n/m, '');
        for (const f of diskFiles) {
          const name = f.slice(diskDir.length + 1);
          const restored = join(out, name);
          const same = statSync(f).size < 65536 ? withoutLineage(f) === withoutLineage(restored) : spawnSync('cmp', [f, restored]).status === 0;
          if (!same) throw new Error(`the restored ${name} differs from the disk's`);
        }
      }
    }
    clean(cpDst, out);

    // 2. Incremental without a change bitmap, on top of the repository's full point.
    const changed = Math.max(1, Math.round(size / CHUNK / 100));
    const inc = [];
    for (let i = 0; i < incRounds; i++) {
      changeChunks(flat, size, changed);
      // Without the bitmap: `backup create` leaves a baseline `<disk>.vmseal-ctk`, which only
      // `vmseal serve` updates; the bytes written straight into the extent above would go unseen.
      clean(`${disk}.vmseal-ctk`);
      spawnSync('sync');
      const r = vmsealJson(env, 'backup', 'create', disk, repo);
      if (r.json.newChunks !== changed) throw new Error(`the incremental backup wrote ${r.json.newChunks} chunks, not ${changed}`);
      inc.push(r);
    }

    // 4. With the change bitmap (rounds begin with an untimed full read: a rollback rewrites the
    // descriptor, a new generation, so the bitmap starts again from the next backup).
    const withBitmap = [];
    const overBitmap = [];
    const overNoBitmap = [];
    for (let i = 0; i < incRounds; i++) {
      vmseal(env, 'backup', 'create', disk, repo); // the baseline: a clean, empty bitmap on this point
      await serveWrite(env, disk, sockDir, size, changed);
      spawnSync('sync');
      const b = vmsealJson(env, 'backup', 'create', disk, repo);
      if (!b.json.changeBitmap?.used || b.json.chunksRead !== changed || b.json.newChunks !== changed) {
        throw new Error(
          `the bitmap backup read ${b.json.chunksRead} chunks and wrote ${b.json.newChunks}, not ${changed} (${JSON.stringify(b.json.changeBitmap)})`,
        );
      }
      withBitmap.push(b);
      const point = b.json.point;
      await serveWrite(env, disk, sockDir, size, changed);
      spawnSync('sync');
      const r1 = vmsealJson(env, 'backup', 'restore', repo, point, '--over', disk);
      if (r1.json.chunksWritten !== changed) throw new Error(`the rollback (bitmap) wrote ${r1.json.chunksWritten} chunks, not ${changed}`);
      overBitmap.push(r1);
      changeChunks(flat, size, changed);
      clean(`${disk}.vmseal-ctk`);
      spawnSync('sync');
      const r2 = vmsealJson(env, 'backup', 'restore', repo, point, '--over', disk);
      if (r2.json.chunksWritten !== changed) throw new Error(`the rollback (no bitmap) wrote ${r2.json.chunksWritten} chunks, not ${changed}`);
      overNoBitmap.push(r2);
    }
    clean(repo);

    // 7. The library, in this process (its repository and restored disk replace the process rows').
    const libRuns = await libraryRounds({ env, disk, flat, repo: join(dir, 'repo-lib'), out, sockDir, changed, rounds });
    const loadAfter = loadavg()[0];

    const cp = summary(runs.cp);
    const full = summary(runs.full);
    const restore = summary(runs.restore);
    const incS = summary(inc);
    const sparseS = summary(sparseRuns);
    const bitmapS = summary(withBitmap);
    const overBitmapS = summary(overBitmap);
    const overNoBitmapS = summary(overNoBitmap);
    const sparseBitmapS = summary(sparseBitmap);
    const floorNodeS = summary(floorNode);
    const floorCliS = summary(floorCli);
    const lib = Object.fromEntries(Object.entries(libRuns).map(([k, v]) => [k, summary(v)]));
    const libRow = (job, r, written) => [job, r.seconds.toFixed(3), `${r.min.toFixed(3)}–${r.max.toFixed(3)}`, fmtMBs(size / r.seconds), written];
    const row = (job, r, bytes, written) => [
      job,
      r.seconds.toFixed(3),
      `${r.min.toFixed(3)}–${r.max.toFixed(3)}`,
      fmtMBs(bytes / r.seconds),
      written,
      Math.round(r.rss / 1024),
    ];
    const sizeLabel = size >= GiB ? `${size / GiB} GiB` : `${size / MiB} MiB`;
    const capLabel = sparseCapacity >= GiB ? `${sparseCapacity / GiB} GiB` : `${sparseCapacity / MiB} MiB`;
    const chunks = size / CHUNK;
    report({
      title: 'Ciphertext backups: vmseal backup vs cp',
      notes: [
        loadNote(loadBefore, loadAfter),
        `Disk: \`vmseal encrypt\` of ${sizeLabel} of random data to an encrypted monolithicFlat disk (local key provider) in ${base === '/dev/shm' ? 'tmpfs (/dev/shm)' : base}; repositories, copies and restored disks in the same folder. Every command is a process spawned by the suite and timed from spawn to exit (start-up included); peak RSS by /usr/bin/time.`,
        `cp, full backup (into a new empty repository, \`backup init\` not timed) and full restore (\`backup restore REPO latest OUT\`: every chunk's hash checked, then written) interleaved over ${rounds} rounds, order reversed every other round, outputs deleted and \`sync\` run before each run; medians. The restored disk's files were compared with the disk's (cmp) once.`,
        `Incremental: before each of ${incRounds} runs, ${changed} chunks (1 %) of the flat extent overwritten with random bytes (ciphertext changes; the backup never decrypts), then \`backup create\` into the same repository — without the change bitmap (\`<disk>.vmseal-ctk\` deleted before each run: writes straight into the extent file are seen by no tracker — only \`vmseal serve\` and library writers through \`trackChanges\` record changes in it): it reads and hashes all ${chunks} chunks and writes only the changed ones (checked: newChunks = ${changed}).`,
        `Peak RSS at ${capLabel}: the same ${sizeLabel} of data at the start of a ${capLabel} monolithicSparse disk (\`vmseal encrypt --subformat monolithicSparse\` of the sparse raw file), full backup into a new repository, ${sparseRuns.length} run(s).`,
        `With the change bitmap at ${capLabel}, ${incRounds} rounds on the ${capLabel} sparse disk above (${sizeLabel} of data at its start), after its last full backup: ${sparseChanged} chunks (1 % of the capacity's ${sparseCapacity / CHUNK} chunks) written through a short-lived \`vmseal serve\` at random offsets over the whole capacity (most where nothing was allocated, so each round allocates ${sparseChanged} MiB more), then \`backup create\` (checked: the bitmap used, chunksRead = newChunks = ${sparseChanged}). Its ratio is to that disk's full backup, which reads its ${sizeLabel} of allocated data: a disk holding ${capLabel} of data would take about ${sparseCapacity / size} times as long to back up in full (not measured: it does not fit in tmpfs beside its repository).`,
        `Process floor: \`node -e 0\` and \`vmseal --version\`, ${rounds} runs each, timed as the other commands (spawn to exit): no \`vmseal\` command can take less than the second. The incremental's ratio is also given with that floor taken off both times, as what vmseal itself costs beyond starting up.`,
        `Library (in-process) rows: the same jobs on the same flat disk as one call each of the public API (\`createBackup\`, \`restoreBackup\`, \`restoreBackupOver\` from dist/, what the CLI calls) in the suite's own long-running process, timed around the call: no process start-up, no module loading (the first round loads the modules before its first timed call; later rounds find them loaded). ${rounds} rounds, each running all six jobs (full backup into a new repository, full restore of the latest point — these two swap order every other round —, 1 % changed in the extent without the bitmap then \`createBackup\`, 1 % written through a short-lived \`vmseal serve\` (untimed) then \`createBackup\` with the bitmap → P, 1 % through the server then \`restoreBackupOver\` to P with the bitmap, 1 % in the extent with the bitmap deleted then \`restoreBackupOver\` to P), a full GC and \`sync\` before each timed call, the same checks as the process rows; medians. Their ratios, labelled \`library (in-process)\`, measure the data path alone: the difference from the process rows is start-up.`,
        `With the change bitmap, ${incRounds} rounds: an untimed \`backup create\` (a clean, empty bitmap on its point); ${changed} chunks (1 %) written through a short-lived \`vmseal serve\` of the disk (qemu-io over its Unix socket, then SIGTERM: the orderly stop leaves the bitmap clean), then \`backup create\` (checked: the bitmap used, chunksRead = newChunks = ${changed}) → point P; ${changed} chunks written through the server again, then \`backup restore REPO P --over DISK\` with that valid bitmap beside the disk; then ${changed} chunks overwritten straight in the flat extent and the bitmap deleted, and the rollback to P again (checked: chunksWritten = ${changed} each time). The serve runs are not timed. With the valid bitmap (its base is P) the rollback compares only the chunks it marks; without, every allocated chunk.`,
      ],
      tables: [
        {
          caption: `Full backup, incremental and restore of a ${sizeLabel} encrypted disk (seconds: median, min–max; MB/s of the disk's data size)`,
          columns: ['job', 'seconds', 'min–max', 'MB/s', 'chunks written', 'peak RSS MiB'],
          rows: [
            row("`cp` of the disk's files", cp, size, '—'),
            row('`backup create`, full (empty repository)', full, size, chunks),
            row('`backup create`, 1 % of chunks changed, no bitmap', incS, size, changed),
            row('`backup restore` (full)', restore, size, chunks),
            row(`\`backup create\`, full, ${capLabel} sparse disk, same data`, sparseS, size, chunks),
            row('`backup create`, 1 % of chunks changed through `vmseal serve`, with its change bitmap', bitmapS, size, changed),
            row('`backup restore --over` (quick rollback), 1 % changed, valid change bitmap', overBitmapS, size, changed),
            row('`backup restore --over` (quick rollback), 1 % changed, no change bitmap', overNoBitmapS, size, changed),
            row(
              `\`backup create\`, ${capLabel} sparse disk, 1 % of its capacity's chunks changed through \`vmseal serve\`, with its change bitmap`,
              sparseBitmapS,
              size,
              sparseChanged,
            ),
            row('`node -e 0` (process floor)', floorNodeS, size, '—'),
            row('`vmseal --version` (CLI floor)', floorCliS, size, '—'),
          ],
        },
        {
          caption: `Library (in-process): the same jobs as calls of the public API in one long-running process, ${sizeLabel} flat disk (seconds: median, min–max; MB/s of the disk's data size)`,
          columns: ['job', 'seconds', 'min–max', 'MB/s', 'chunks written'],
          rows: [
            libRow('`createBackup`, full (empty repository)', lib.full, chunks),
            libRow('`createBackup`, 1 % of chunks changed, no bitmap', lib.inc, changed),
            libRow('`createBackup`, 1 % of chunks changed through `vmseal serve`, with its change bitmap', lib.bitmap, changed),
            libRow('`restoreBackup` (full)', lib.restore, chunks),
            libRow('`restoreBackupOver` (quick rollback), 1 % changed, valid change bitmap', lib.overBitmap, changed),
            libRow('`restoreBackupOver` (quick rollback), 1 % changed, no change bitmap', lib.overNoBitmap, changed),
          ],
        },
      ],
      ratios: [
        { name: `full backup vs cp of the disk's files, ${sizeLabel} in tmpfs (throughput)`, value: cp.seconds / full.seconds, target: 0.8 },
        { name: 'incremental (1 % changed, no bitmap) time / full backup time', value: incS.seconds / full.seconds, target: null },
        { name: "full restore vs cp of the disk's files (throughput)", value: cp.seconds / restore.seconds, target: null },
        // Issue 11's targets are time fractions (≤ 5 %, ≤ 25 %, ≤ 75 %): as speed-ups, ≥ 20×, ≥ 4×, ≥ 1.33×.
        {
          name: 'full backup time / incremental time with the change bitmap (1 % changed; target: ≤ 5 % of the full)',
          value: full.seconds / bitmapS.seconds,
          target: 20,
        },
        // Only when the incremental outlasts the floor: on a loaded machine the floor's median can
        // exceed it, and a difference near zero makes a meaningless ratio (a loaded run printed 4370).
        ...(bitmapS.seconds > floorCliS.seconds
          ? [
              {
                name: `full backup time / incremental time with the change bitmap, both less the CLI floor (\`vmseal --version\`), ${sizeLabel}`,
                value: (full.seconds - floorCliS.seconds) / (bitmapS.seconds - floorCliS.seconds),
                target: null,
              },
            ]
          : []),
        {
          name: `full backup time / incremental time with the change bitmap, ${capLabel} sparse disk (${sizeLabel} allocated, 1 % of the capacity's chunks changed)`,
          value: sparseS.seconds / sparseBitmapS.seconds,
          target: null,
        },
        {
          name: 'full restore time / quick rollback time, valid bitmap (1 % changed; target: ≤ 25 % of the full)',
          value: restore.seconds / overBitmapS.seconds,
          target: 4,
        },
        {
          name: 'full restore time / quick rollback time, no bitmap (1 % changed; target: ≤ 75 % of the full)',
          value: restore.seconds / overNoBitmapS.seconds,
          target: 1.33,
        },
        {
          name: `library (in-process): full backup vs cp of the disk's files, ${sizeLabel} (throughput; cp as a process)`,
          value: cp.seconds / lib.full.seconds,
          target: 0.8,
        },
        { name: 'library (in-process): incremental (1 % changed, no bitmap) time / full backup time', value: lib.inc.seconds / lib.full.seconds, target: null },
        {
          name: 'library (in-process): full backup time / incremental time with the change bitmap (1 % changed; target: ≤ 5 % of the full)',
          value: lib.full.seconds / lib.bitmap.seconds,
          target: 20,
        },
        {
          name: 'library (in-process): full restore time / quick rollback time, valid bitmap (1 % changed; target: ≤ 25 % of the full)',
          value: lib.restore.seconds / lib.overBitmap.seconds,
          target: 4,
        },
        {
          name: 'library (in-process): full restore time / quick rollback time, no bitmap (1 % changed; target: ≤ 75 % of the full)',
          value: lib.restore.seconds / lib.overNoBitmap.seconds,
          target: 1.33,
        },
        { name: `200 MiB / peak RSS of a full backup, ${sizeLabel} flat`, value: 200 / (full.rss / 1024), target: 1 },
        { name: `200 MiB / peak RSS of a full backup, ${capLabel} sparse`, value: 200 / (sparseS.rss / 1024), target: 1 },
        { name: `peak RSS of a full backup: ${sizeLabel} flat / ${capLabel} sparse`, value: full.rss / sparseS.rss, target: null },
      ],
    });
  } finally {
    clean(dir);
  }
}

await main();
