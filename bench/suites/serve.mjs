// NBD serving: `vmseal serve` on an encrypted monolithicFlat (aes-256-xts, 512-byte units) versus
// qemu-nbd serving the same data as a plain raw image (the ceiling) and as a LUKS image through
// qemu's luks driver (aes-256-xts-plain64, what a KVM user would run instead). Issue 9's targets.
//
// Same clients and settings for all three servers, each server alone on the machine while measured:
// - sequential: nbdcopy --connections=1 --requests=16 --request-size=1 MiB, raw file → export (with
//   --flush) and export → null:; best of N rounds, server order alternated round by round;
// - random: fio's libnbd engine (Debian's fio has it: `fio --enghelp=nbd`), 4 KiB random reads and
//   writes at queue depth 16, one connection, time-based; best of N rounds. A C client on libnbd
//   would do the same; fio reports its own CPU use, which shows it is not the bottleneck;
// - memory: peak RSS (VmHWM) of each server after 16 fio connections × queue depth 16 × 1 MiB
//   random reads and writes (256 MiB in flight from the clients), against the 256 MiB target.
// With two or more cores the server is pinned to CPU 0 and every client to CPU 1 (taskset), and the
// CPU use of both is reported (server: utime+stime of /proc/PID/stat over the wall time).
// Images live in tmpfs (/dev/shm) when it has room; clients connect over TCP to 127.0.0.1, or over
// Unix sockets with VMSEAL_BENCH_NBD=unix (vmseal serve's default transport, and a local VM's).
//
// vmseal runs twice in the random part: as shipped, and with VMSEAL_INLINE_IO=0 (every file read
// and write through libuv's thread pool, as before inline I/O): the random rows show what inline
// I/O is worth on this machine (src/util/inline-io.ts).
//
// Without a `vmseal serve` command in this build (dist/), the suite measures qemu-nbd alone and
// reports no ratios. Needs: qemu-utils (qemu-img, qemu-nbd), libnbd-bin (nbdcopy, nbdinfo), fio,
// util-linux (taskset), GNU time (/usr/bin/time); cryptsetup when qemu-img cannot make the LUKS image.
//
// Run: npm run bench -- serve [--quick]
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { quick, report, fmtMBs } from '../lib.mjs';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const root = fileURLToPath(new URL('../..', import.meta.url));
const BIN = join(root, 'bin', 'vmseal.js');
const SIZE = quick ? 256 * MiB : 1 * GiB;
const ROUNDS = quick ? 1 : 3;
const RAND_SECONDS = quick ? 3 : 10;
const RSS_SECONDS = quick ? 3 : 10;
const RSS_TARGET_MIB = 256;
const CLK_TCK = 100; // Linux USER_HZ: /proc/PID/stat counts CPU time in 1/100 s on every architecture
const UNIX = process.env.VMSEAL_BENCH_NBD === 'unix';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function need(cmd, args, what) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`serve bench: ${cmd} is needed (${what})`);
  return `${r.stdout}${r.stderr}`;
}

const versions = {
  qemuNbd: need('qemu-nbd', ['--version'], 'apt-get install qemu-utils').split('\n')[0],
  nbdcopy: need('nbdcopy', ['--version'], 'apt-get install libnbd-bin').split('\n')[0],
  fio: need('fio', ['--version'], 'apt-get install fio').trim(),
};
need('/usr/bin/time', ['-f', '%e', 'true'], 'apt-get install time');
if (!/uri\s*:/.test(need('fio', ['--enghelp=nbd'], 'apt-get install fio'))) throw new Error('serve bench: this fio has no nbd (libnbd) engine');

// Pinning: the server on CPU 0, the clients on CPU 1, so that neither steals the other's core.
const pinned = os.cpus().length >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
const onServerCpu = (argv) => (pinned ? ['taskset', '-c', '0', ...argv] : argv);
const onClientCpu = (argv) => (pinned ? ['taskset', '-c', '1', ...argv] : argv);

/** The environment of vmseal children: nothing of the caller's VMSEAL_* settings but the build overrides. */
function vmsealEnv(home) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('VMSEAL_') && k !== 'VMSEAL_CLI_ENTRY' && k !== 'VMSEAL_NATIVE_PATH') continue;
    env[k] = v;
  }
  env.VMSEAL_HOME = home;
  // The server's control socket then goes into that home, not into the user's runtime folder.
  delete env.XDG_RUNTIME_DIR;
  return env;
}

const serveAvailable = spawnSync(process.execPath, [BIN, 'serve', '--help'], { encoding: 'utf8' }).stdout?.includes('--listen') ?? false;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function writeRandom(path, size) {
  const fd = openSync(path, 'w');
  const block = Buffer.alloc(16 * MiB);
  for (let done = 0; done < size; done += block.length) {
    randomFillSync(block);
    writeSync(fd, block, 0, Math.min(block.length, size - done), done);
  }
  closeSync(fd);
}

function run(argv, opts = {}) {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', maxBuffer: 64 * MiB, timeout: 900_000, ...opts });
  if (r.error || r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.error?.message ?? r.status ?? r.signal}): ${r.stderr}`);
  return r;
}

/** CPU seconds (user + system, all threads) a process has used so far. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // after "pid (comm) "; comm may hold spaces
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime, stime: fields 14 and 15 of stat(5)
}

/** Peak and current resident set size of a process, MiB. */
function rssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { peak: kib('VmHWM') / 1024, now: kib('VmRSS') / 1024 };
}

/**
 * One server, started in the foreground (its pid is the server's: taskset execs it), logging to a
 * file (a pipe nobody reads while a synchronous client runs could fill and stall it).
 */
async function startServer(kind, files, dir) {
  const port = UNIX ? 0 : await freePort();
  const socket = join(dir, `${kind}.sock`);
  const uri = UNIX ? `nbd+unix:///bench?socket=${socket}` : `nbd://127.0.0.1:${port}/bench`;
  const log = join(dir, `${kind}.log`);
  const out = openSync(log, 'w');
  let argv;
  let env = process.env;
  // -t: keep serving after a client leaves; -e 16: up to 16 connections (the RSS test), as --shared 16.
  const qemuCommon = ['-t', '-e', '16', '-x', 'bench', ...(UNIX ? ['-k', socket] : ['-b', '127.0.0.1', '-p', String(port)])];
  if (kind === 'plain') argv = ['qemu-nbd', '-f', 'raw', ...qemuCommon, files.plain];
  else if (kind === 'luks')
    argv = [
      'qemu-nbd',
      '--object',
      `secret,id=s0,file=${files.secret}`,
      '--image-opts',
      `driver=luks,key-secret=s0,file.filename=${files.luks}`,
      ...qemuCommon,
    ];
  else {
    // vmsealPool: the same server with inline I/O turned off (see the top of this file).
    argv = [
      process.execPath,
      BIN,
      'serve',
      files.vmdk,
      ...(UNIX ? ['--socket', socket] : ['--listen', `127.0.0.1:${port}`]),
      '--name',
      'bench',
      '--shared',
      '16',
    ];
    env = vmsealEnv(files.home);
    if (kind === 'vmsealPool') env.VMSEAL_INLINE_IO = '0';
  }
  const child = spawn(onServerCpu(argv)[0], onServerCpu(argv).slice(1), { stdio: ['ignore', out, out], env });
  closeSync(out);
  let exited = null;
  child.on('exit', (code, signal) => (exited = code ?? signal));
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited !== null) throw new Error(`${kind} server exited (${exited}) before it served: ${readFileSync(log, 'utf8')}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${kind} server did not serve within 60 s: ${readFileSync(log, 'utf8')}`);
    }
    // Ready = a real client gets the export's size (vmseal also says "serving" first; this covers both).
    if (spawnSync('nbdinfo', ['--size', uri], { encoding: 'utf8' }).stdout?.trim() === String(SIZE)) break;
    await sleep(200);
  }
  return {
    kind,
    uri,
    pid: child.pid,
    async stop() {
      if (exited === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 30_000);
        while (exited === null) await sleep(50);
        clearTimeout(t);
      }
      if (kind === 'vmseal' && exited !== 0) throw new Error(`vmseal serve exited ${exited} on SIGTERM: ${readFileSync(log, 'utf8')}`);
    },
  };
}

/** Run a client on the client CPU, timing it and the server's CPU use over the same interval. */
function measured(server, argv) {
  const cpu0 = cpuSeconds(server.pid);
  const t0 = process.hrtime.bigint();
  const r = run(['/usr/bin/time', '-f', 'TIME %e %U %S', ...onClientCpu(argv)]);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const serverCpu = (cpuSeconds(server.pid) - cpu0) / seconds;
  const t = /^TIME (\S+) (\S+) (\S+)$/m.exec(r.stderr);
  const clientCpu = t ? (Number(t[2]) + Number(t[3])) / Number(t[1]) : NaN;
  return { seconds, serverCpu, clientCpu, stdout: r.stdout };
}

const nbdcopy = (src, dst, extra = []) => ['nbdcopy', '--connections=1', '--requests=16', `--request-size=${MiB}`, ...extra, src, dst];

function fioArgs(uri, { rw, bs, jobs, seconds }) {
  return [
    'fio',
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${rw}`,
    `--bs=${bs}`,
    '--iodepth=16',
    `--numjobs=${jobs}`,
    `--size=${SIZE}`,
    '--time_based',
    `--runtime=${seconds}`,
    '--ramp_time=1',
    '--norandommap',
    '--randrepeat=0',
    '--group_reporting',
    '--output-format=json',
  ];
}

/** fio's JSON report (it prints "fio: connected to NBD server" before it). */
function fioJob(stdout) {
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  if (job.error) throw new Error(`fio reported error ${job.error}`);
  return job;
}

function randomIo(server, rw) {
  const m = measured(server, fioArgs(server.uri, { rw, bs: '4k', jobs: 1, seconds: RAND_SECONDS }));
  const job = fioJob(m.stdout);
  const iops = rw === 'randread' ? job.read.iops : job.write.iops;
  // fio's own CPU accounting (percent of one CPU) excludes its start-up, unlike /usr/bin/time.
  return { iops, clientCpu: (job.usr_cpu + job.sys_cpu) / 100, serverCpu: m.serverCpu };
}

const pct = (x) => (Number.isFinite(x) ? `${Math.round(x * 100)}%` : '—');
const LABEL = {
  vmseal: 'vmseal serve, encrypted monolithicFlat (aes-256-xts, 512 B units)',
  luks: 'qemu-nbd, LUKS through the luks driver (aes-256-xts-plain64)',
  plain: 'qemu-nbd, plain raw (no encryption)',
  vmsealPool: 'vmseal serve, as above, VMSEAL_INLINE_IO=0 (file I/O on the thread pool)',
};

async function main() {
  const shmFree = existsSync('/dev/shm')
    ? (() => {
        const st = statfsSync('/dev/shm');
        return st.bavail * st.bsize;
      })()
    : 0;
  const base = shmFree > 5 * SIZE ? '/dev/shm' : os.tmpdir();
  const dir = mkdtempSync(join(base, 'vmseal-bench-serve-'));
  const home = mkdtempSync(join(os.tmpdir(), 'vmseal-bench-serve-home-'));
  const running = new Set();
  const cleanup = () => {
    for (const s of running) spawnSync('kill', ['-KILL', String(s.pid)]);
    rmSync(dir, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  };
  process.on('exit', cleanup);
  const kinds = serveAvailable ? ['vmseal', 'luks', 'plain'] : ['luks', 'plain'];
  // Random I/O only (see the top of this file).
  const randKinds = serveAvailable ? [...kinds, 'vmsealPool'] : kinds;
  const notes = [];
  try {
    // The same random data behind every server.
    const files = { plain: join(dir, 'src.raw'), luks: join(dir, 'disk.luks'), vmdk: join(dir, 'disk.vmdk'), secret: join(dir, 'luks.secret'), home };
    const source = join(dir, 'data.raw');
    writeRandom(source, SIZE);
    run(['cp', source, files.plain]);
    writeFileSync(files.secret, 'bench', { mode: 0o600 });
    // iter-time=100: the KDF runs once at open; it does not matter here (as in the pipeline suite).
    // qemu-img times its KDF with per-thread CPU clocks and gives up ("Unable to get accurate CPU
    // usage") on a busy machine: then cryptsetup makes the same LUKS1 layout with fixed iterations.
    const luksHeader = 2 * MiB; // LUKS1 payload offset of aes-xts with a 512-bit key
    const made = spawnSync('qemu-img', [
      'create',
      '-q',
      '-f',
      'luks',
      '--object',
      `secret,id=s0,file=${files.secret}`,
      '-o',
      'key-secret=s0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,iter-time=100,preallocation=full',
      files.luks,
      String(SIZE),
    ]);
    if (made.status !== 0) {
      rmSync(files.luks, { force: true });
      run(['fallocate', '-l', String(SIZE + luksHeader), files.luks]);
      run([
        'cryptsetup',
        'luksFormat',
        '-q',
        '--type',
        'luks1',
        '--cipher',
        'aes-xts-plain64',
        '--key-size',
        '512',
        '--pbkdf-force-iterations',
        '1000',
        '--key-file',
        files.secret,
        files.luks,
      ]);
      notes.push(
        'The LUKS image was made by `cryptsetup luksFormat --type luks1 --cipher aes-xts-plain64 --key-size 512` (qemu-img could not time its KDF on the busy machine); same layout and cipher.',
      );
    }
    run([
      'qemu-img',
      'convert',
      '-n',
      '--object',
      `secret,id=s0,file=${files.secret}`,
      '-f',
      'raw',
      source,
      '--target-image-opts',
      `driver=luks,key-secret=s0,file.filename=${files.luks}`,
    ]);
    if (serveAvailable) {
      // The CLI's default for a raw source: encrypted monolithicFlat, 512-byte units, local key provider.
      const e = JSON.parse(run([process.execPath, BIN, 'encrypt', source, files.vmdk, '--json'], { env: vmsealEnv(home) }).stdout);
      if (!e.ok || e.unitSize !== 512 || e.subformat !== 'monolithicFlat') throw new Error(`unexpected encrypt result ${JSON.stringify(e)}`);
    } else {
      notes.push('`vmseal serve` is not in this build (dist/): qemu-nbd only, no ratios.');
    }

    const best = Object.fromEntries(randKinds.map((k) => [k, {}]));
    const keep = (k, name, value, higherIsBetter, extra) => {
      const cur = best[k][name];
      if (!cur || (higherIsBetter ? value > cur.value : value < cur.value)) best[k][name] = { value, ...extra };
    };
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 ? [...randKinds].reverse() : randKinds;
      for (const kind of order) {
        const server = await startServer(kind, files, dir);
        running.add(server);
        console.log(`round ${round + 1}/${ROUNDS}: ${kind} on ${server.uri}`);
        if (kind === 'vmsealPool') {
          const rr = randomIo(server, 'randread');
          keep(kind, 'randRead', rr.iops, true, rr);
          const rw = randomIo(server, 'randwrite');
          keep(kind, 'randWrite', rw.iops, true, rw);
          await server.stop();
          running.delete(server);
          continue;
        }
        const w = measured(server, nbdcopy(source, server.uri, ['--flush']));
        keep(kind, 'seqWrite', SIZE / w.seconds, true, w);
        if (round === 0) {
          // Every server must hand back exactly what was written (untimed).
          const check = join(dir, 'check.raw');
          run(nbdcopy(server.uri, check));
          run(['cmp', '-s', source, check]);
          rmSync(check);
        }
        const r = measured(server, nbdcopy(server.uri, 'null:'));
        keep(kind, 'seqRead', SIZE / r.seconds, true, r);
        const rr = randomIo(server, 'randread');
        keep(kind, 'randRead', rr.iops, true, rr);
        const rw = randomIo(server, 'randwrite');
        keep(kind, 'randWrite', rw.iops, true, rw);
        await server.stop();
        running.delete(server);
      }
    }

    // Memory under load: a fresh server per kind, 16 connections at queue depth 16 with 1 MiB requests.
    const rss = {};
    for (const kind of kinds) {
      const server = await startServer(kind, files, dir);
      running.add(server);
      const idle = rssMiB(server.pid).now;
      const m = measured(server, fioArgs(server.uri, { rw: 'randrw', bs: '1m', jobs: 16, seconds: RSS_SECONDS }));
      fioJob(m.stdout);
      rss[kind] = { idle, peak: rssMiB(server.pid).peak, serverCpu: m.serverCpu };
      await server.stop();
      running.delete(server);
    }

    notes.push(
      `${SIZE / MiB} MiB of random data in ${base === '/dev/shm' ? 'tmpfs (/dev/shm)' : `${base} (tmpfs had too little room)`}; every server on ${UNIX ? 'a Unix socket (VMSEAL_BENCH_NBD=unix)' : 'TCP 127.0.0.1'}, one server running at a time; round 1 checks each export reads back what was written.`,
      `vmseal: \`vmseal serve DISK ${UNIX ? '--socket PATH' : '--listen 127.0.0.1:PORT'} --shared 16\` on an encrypted monolithicFlat made by \`vmseal encrypt\` (aes-256-xts, 512-byte data units, local key provider).`,
      `qemu-nbd: \`qemu-nbd -t -e 16\` (default cache=writeback, aio=threads) on the raw file, and on a LUKS image (\`qemu-img create -f luks -o cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,preallocation=full\`) opened with \`--image-opts driver=luks\`.`,
      `Sequential: \`nbdcopy --connections=1 --requests=16 --request-size=1048576\`, file → export with --flush and export → null:, best of ${ROUNDS}. Random: fio (${versions.fio}) --ioengine=nbd, 4 KiB, iodepth 16, one connection, ${RAND_SECONDS} s after a 1 s ramp, best of ${ROUNDS}. Memory: peak RSS (VmHWM) after ${RSS_SECONDS} s of fio randrw, 1 MiB requests, 16 connections × iodepth 16.`,
      pinned
        ? 'Server pinned to CPU 0, clients to CPU 1 (taskset). CPU columns: share of one CPU over the run (server: utime+stime from /proc; nbdcopy: /usr/bin/time; fio: its own usr+sys).'
        : 'One core only: server and clients share it (no taskset pinning); ratios are less meaningful.',
      `${versions.qemuNbd}; ${versions.nbdcopy}.`,
      "Needs qemu-utils, libnbd-bin, fio (Debian 12's has the libnbd engine), util-linux (taskset) and time; .ci/run does not install fio (the benchmarks do not run in CI).",
    );
    const seqRows = kinds.map((k) => [
      LABEL[k],
      fmtMBs(best[k].seqRead.value),
      fmtMBs(best[k].seqWrite.value),
      `${pct(best[k].seqRead.serverCpu)} / ${pct(best[k].seqWrite.serverCpu)}`,
      `${pct(best[k].seqRead.clientCpu)} / ${pct(best[k].seqWrite.clientCpu)}`,
    ]);
    const randRows = randKinds.map((k) => [
      LABEL[k],
      Math.round(best[k].randRead.value),
      Math.round(best[k].randWrite.value),
      `${pct(best[k].randRead.serverCpu)} / ${pct(best[k].randWrite.serverCpu)}`,
      `${pct(best[k].randRead.clientCpu)} / ${pct(best[k].randWrite.clientCpu)}`,
    ]);
    const rssRows = kinds.map((k) => [LABEL[k], Math.round(rss[k].idle), Math.round(rss[k].peak), pct(rss[k].serverCpu)]);
    const ratios = [];
    if (serveAvailable) {
      const v = best.vmseal;
      const vs = (name, what, other, target) =>
        ratios.push({ name: `${what} vs ${other === 'luks' ? 'qemu-nbd+LUKS' : 'qemu-nbd plain'}`, value: v[name].value / best[other][name].value, target });
      vs('seqRead', 'sequential 1 MiB reads', 'luks', 3);
      vs('seqRead', 'sequential 1 MiB reads', 'plain', 0.7);
      vs('seqWrite', 'sequential 1 MiB writes', 'luks', 3);
      vs('seqWrite', 'sequential 1 MiB writes', 'plain', 0.7);
      vs('randRead', '4 KiB random reads QD16', 'luks', 1);
      vs('randRead', '4 KiB random reads QD16', 'plain', 0.6);
      vs('randWrite', '4 KiB random writes QD16', 'luks', 1);
      vs('randWrite', '4 KiB random writes QD16', 'plain', 0.6);
      ratios.push({ name: `server RSS, 16 connections: ${RSS_TARGET_MIB} MiB / peak`, value: RSS_TARGET_MIB / rss.vmseal.peak, target: 1 });
    }
    report({
      title: 'NBD serving: vmseal serve vs qemu-nbd (plain and LUKS)',
      notes,
      tables: [
        {
          caption: 'Sequential, 1 MiB requests (nbdcopy, 1 connection, 16 requests in flight)',
          columns: ['server', 'read MB/s', 'write MB/s', 'server CPU read / write', 'client CPU read / write'],
          rows: seqRows,
        },
        {
          caption: '4 KiB random I/O, queue depth 16 (fio libnbd engine, 1 connection)',
          columns: ['server', 'read IOPS', 'write IOPS', 'server CPU read / write', 'client CPU read / write'],
          rows: randRows,
        },
        {
          caption: 'Server memory, 16 connections × queue depth 16 × 1 MiB (fio randrw)',
          columns: ['server', 'RSS at start MiB', 'peak RSS MiB', 'server CPU'],
          rows: rssRows,
        },
      ],
      ratios,
    });
  } finally {
    for (const s of running) await s.stop().catch(() => {});
    cleanup();
  }
}

await main();
