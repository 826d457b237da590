// KMIP key provider against a real PyKMIP server on loopback: ms per getKey (KMIP Get) with a
// reused TLS connection and with a new connection (TCP + TLS 1.2 handshake) per call, plus
// createKey (Create + Activate) and a bare round trip (Discover Versions). See docs/kmip.md.
//
// The suite starts its own PyKMIP (Debian python3-pykmip) with fresh openssl certificates, like
// test/helpers/pykmip.ts does for the tests (that helper is TypeScript; this is a compact copy).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { measure, quick, report } from '../lib.mjs';

const vm = await import(process.env.VMSEAL_DIST ?? new URL('../../dist/index.js', import.meta.url).href);

const msPer = (opsPerSec) => 1000 / opsPerSec;
const fmt = (ms) => (ms < 1 ? ms.toFixed(3) : ms.toFixed(2));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function makeCerts(dir) {
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '2',
    '-subj',
    '/CN=vmseal-bench-ca',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  const issue = (name, cn, ext) => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    ssl('req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    ssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-set_serial',
      String(Date.now()) + name.length,
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-extfile',
      `${name}.ext`,
    );
  };
  issue('server', '127.0.0.1', 'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n');
  issue('client', 'vmseal-bench', 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n');
}

async function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), 'vmseal-bench-kmip-'));
let child;
const killGroup = (sig) => {
  try {
    if (child) process.kill(-child.pid, sig);
  } catch {
    /* gone */
  }
};
process.on('exit', () => {
  killGroup('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

const rows = [];
const notes = [];
try {
  const certs = join(dir, 'certs');
  mkdirSync(certs);
  mkdirSync(join(dir, 'policies'));
  makeCerts(certs);
  const port = await freePort();
  writeFileSync(
    join(dir, 'server.conf'),
    [
      '[server]',
      'hostname=127.0.0.1',
      `port=${port}`,
      `certificate_path=${join(certs, 'server.crt')}`,
      `key_path=${join(certs, 'server.key')}`,
      `ca_path=${join(certs, 'ca.crt')}`,
      'auth_suite=TLS1.2',
      `policy_path=${join(dir, 'policies')}`,
      'enable_tls_client_auth=True',
      'tls_cipher_suites=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384 TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256',
      'logging_level=WARNING',
      `database_path=${join(dir, 'pykmip.db')}`,
      '',
    ].join('\n'),
  );
  const out = openSync(join(dir, 'server.out'), 'a');
  child = spawn('/usr/bin/python3', ['/usr/bin/pykmip-server', '-f', join(dir, 'server.conf'), '-l', join(dir, 'server.log')], {
    cwd: dir,
    detached: true,
    stdio: ['ignore', out, out],
  });
  closeSync(out);

  const options = {
    id: 'bench',
    endpoints: [{ host: '127.0.0.1', port }],
    ca: readFileSync(join(certs, 'ca.crt'), 'utf8'),
    cert: readFileSync(join(certs, 'client.crt'), 'utf8'),
    key: readFileSync(join(certs, 'client.key'), 'utf8'),
    timeoutMs: 5000,
  };
  const provider = new vm.KmipKeyProvider(options);
  for (let t = 0; ; t++) {
    try {
      await provider.discoverVersions();
      break;
    } catch (err) {
      if (t > 100) throw err;
      await sleep(150);
    }
  }
  const vendor = (await provider.query()).vendorIdentification;
  const { keyId } = await provider.createKey({ name: 'bench-kek' });

  const reused = msPer(await measure(async () => (await provider.getKey(keyId)).fill(0)));
  rows.push(['getKey (KMIP Get), reused connection', fmt(reused)]);
  const fresh = msPer(
    await measure(async () => {
      const p = new vm.KmipKeyProvider(options);
      (await p.getKey(keyId)).fill(0);
      await p.close();
    }),
  );
  rows.push(['getKey, new TLS connection per call', fmt(fresh)]);
  rows.push(['Discover Versions round trip, reused connection', fmt(msPer(await measure(() => provider.discoverVersions())))]);
  const created = [];
  rows.push([
    'createKey (Create + Activate), reused connection',
    fmt(msPer(await measure(async () => created.push((await provider.createKey()).keyId), { minMs: quick ? 100 : 300, rounds: quick ? 1 : 3 }))),
  ]);
  for (const id of created) await provider.destroyKey(id);
  await provider.destroyKey(keyId);
  const stats = provider.stats;
  await provider.close();
  notes.push(
    `Server: ${vendor} (/usr/bin/pykmip-server, sqlite database, logging WARNING) on 127.0.0.1, KMIP 1.2, TLS 1.2 with an RSA-2048 certificate and mutual authentication.`,
  );
  notes.push(
    `A reused connection saves the TCP + TLS handshake: ${fmt(fresh)} ms vs ${fmt(reused)} ms per getKey (${(fresh / reused).toFixed(1)}×). The pooled provider opened ${stats.connectionsOpened} connection(s) for ${stats.requestsAnswered} requests.`,
  );
  notes.push(
    'Most of the per-request time is the Python server (PyKMIP parses, checks the policy and reads sqlite); a production KMS answers faster or slower.',
  );
} finally {
  killGroup('SIGINT');
  for (let i = 0; i < 30; i++) {
    try {
      process.kill(-child.pid, 0);
      await sleep(100);
    } catch {
      break;
    }
  }
  killGroup('SIGKILL');
}

report({
  title: 'KMIP key provider (PyKMIP on loopback)',
  notes,
  tables: [{ caption: 'ms per operation (lower is better)', columns: ['operation', 'ms'], rows }],
  ratios: [],
});
