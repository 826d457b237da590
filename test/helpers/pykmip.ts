/**
 * Start and stop a real KMIP server (PyKMIP, Debian's python3-pykmip) for tests.
 *
 *   const kms = await startPyKmip({ nodes: 2 });
 *   const provider = new KmipKeyProvider(kms.providerOptions('kms1'));
 *   …
 *   await kms.stop();
 *
 * What it does (see ../shared/reference/kmip.md for why each step is needed):
 * - makes a temp dir with freshly generated certificates (openssl CLI, RSA-2048): a test CA; a
 *   server certificate CN=127.0.0.1 with SAN IP:127.0.0.1,DNS:localhost and serverAuth; a client
 *   certificate with clientAuth and one CN (PyKMIP's identity = that CN);
 * - writes one server.conf per node (TLS1.2 auth suite, client auth on, policy_path set to an empty
 *   dir, the sqlite database in the temp dir) and starts each node with
 *   `/usr/bin/python3 /usr/bin/pykmip-server -f CONF -l LOG` in its own process group on a free
 *   loopback port; two nodes are two servers sharing one database file (a "cluster");
 * - waits until a real Discover Versions request succeeds;
 * - stops a node with SIGINT to its process group, waits (with a timeout) and SIGKILLs the group if
 *   it hangs; `stop()` stops every node and removes the temp dir. Nodes still running when the
 *   test process exits are killed by an exit hook, so nothing is left behind when a test fails.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, openSync, closeSync, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { KmipClient } from '../../src/kmip/index.js';

const execFileP = promisify(execFile);

export const PYTHON = '/usr/bin/python3';
export const PYKMIP_SERVER = '/usr/bin/pykmip-server';

export interface PyKmipEndpoint {
  host: string;
  port: number;
}

/** A TLS client identity: PEM texts, and the files holding them. */
export interface ClientIdentity {
  cn: string;
  cert: string;
  key: string;
  certPath: string;
  keyPath: string;
}

/** A client identity issued by a CA that the server does not trust (plus that CA). */
export interface ForeignIdentity extends ClientIdentity {
  ca: string;
}

export interface PyKmip {
  /** The temp dir holding certs, configs, logs and the database. */
  readonly dir: string;
  /** One { host, port } per node, in node order. */
  readonly endpoints: PyKmipEndpoint[];
  /** PEM of the test CA (it signed the server and client certificates). */
  readonly ca: string;
  readonly caPath: string;
  /** The default client identity (CN "vmseal-test-client"). */
  readonly clientCn: string;
  readonly clientCert: string;
  readonly clientKey: string;
  readonly clientCertPath: string;
  readonly clientKeyPath: string;
  /** Options for `new KmipKeyProvider(...)` with the default identity (or another one). */
  providerOptions(
    id?: string,
    identity?: { cert: string; key: string },
  ): {
    id: string;
    endpoints: PyKmipEndpoint[];
    ca: string;
    cert: string;
    key: string;
  };
  /**
   * Another client identity signed by the same CA (a different PyKMIP owner). `extendedKeyUsage`
   * (default "clientAuth") can be another usage (TLS then refuses the certificate) or "none" (no
   * extension: TLS accepts it, PyKMIP answers Authentication Not Successful).
   */
  makeClient(cn: string, opts?: { extendedKeyUsage?: 'clientAuth' | 'serverAuth' | 'none' }): Promise<ClientIdentity>;
  /** A client identity signed by another CA, which the server must refuse. */
  makeOtherCaClient(cn?: string): Promise<ForeignIdentity>;
  /**
   * Stop node i: SIGINT to its process group, SIGKILL if it has not exited after `graceMs`
   * (default 2000; PyKMIP joins each open session thread for up to 10 s on SIGINT, so a node with
   * client connections open is usually killed). `graceMs: 0` kills at once, like a crash.
   */
  stopNode(i: number, opts?: { graceMs?: number }): Promise<void>;
  /** Start node i again on the same port and wait until it answers. */
  startNode(i: number): Promise<void>;
  /** True while node i's server process runs. */
  isRunning(i: number): boolean;
  /** The server log of node i (for debugging a failed test). */
  log(i: number): string;
  /** Stop every node and remove the temp dir (unless it was passed in as `dir`). */
  stop(): Promise<void>;
}

export interface StartPyKmipOptions {
  /** Number of servers sharing one database (default: 1). */
  nodes?: 1 | 2;
  /** Put the files here (created if missing, not removed by stop()); default: a new temp dir. */
  dir?: string;
  /** How long to wait for a node to answer its first request (default: 20 000 ms). */
  startTimeoutMs?: number;
}

// ---------------------------------------------------------------------------------------------
// Certificates

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await execFileP('openssl', args, { cwd, timeout: 30_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`openssl ${args[0]} failed: ${e.stderr ?? e.message}`, { cause: err });
  }
}

const serial = (): string => '0x' + randomBytes(8).toString('hex').replace(/^./, '1');

async function makeCa(certDir: string, name: string, cn: string): Promise<{ crt: string; key: string }> {
  const crt = path.join(certDir, `${name}.crt`);
  const key = path.join(certDir, `${name}.key`);
  await openssl(
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      crt,
      '-days',
      '3',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    certDir,
  );
  return { crt, key };
}

async function issue(certDir: string, ca: { crt: string; key: string }, name: string, cn: string, ext: string): Promise<{ crt: string; key: string }> {
  const crt = path.join(certDir, `${name}.crt`);
  const key = path.join(certDir, `${name}.key`);
  const csr = path.join(certDir, `${name}.csr`);
  const extFile = path.join(certDir, `${name}.ext`);
  writeFileSync(extFile, ext);
  await openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${cn}`], certDir);
  await openssl(
    ['x509', '-req', '-in', csr, '-CA', ca.crt, '-CAkey', ca.key, '-set_serial', serial(), '-out', crt, '-days', '3', '-sha256', '-extfile', extFile],
    certDir,
  );
  return { crt, key };
}

const CLIENT_EXT = 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n';
const SERVER_EXT =
  'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n';

function safeName(cn: string): string {
  return cn.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 60) + '-' + randomBytes(3).toString('hex');
}

/** A test CA with a server identity (CN=127.0.0.1, SAN IP:127.0.0.1,DNS:localhost) and a client identity. */
export interface TestPki {
  ca: string;
  caPath: string;
  caKeyPath: string;
  server: ClientIdentity;
  client: ClientIdentity;
}

/**
 * Generate a test PKI into `certDir` (openssl CLI, RSA-2048; ≈1 s). Also useful on its own for a
 * local `tls.createServer` that plays a misbehaving KMS.
 */
export async function generateTestPki(certDir: string, clientCn = 'vmseal-test-client'): Promise<TestPki> {
  mkdirSync(certDir, { recursive: true });
  const ca = await makeCa(certDir, 'ca', 'vmseal-test-ca');
  const [server, client] = await Promise.all([issue(certDir, ca, 'server', '127.0.0.1', SERVER_EXT), issue(certDir, ca, 'client', clientCn, CLIENT_EXT)]);
  const identity = (cn: string, files: { crt: string; key: string }): ClientIdentity => ({
    cn,
    cert: readFileSync(files.crt, 'utf8'),
    key: readFileSync(files.key, 'utf8'),
    certPath: files.crt,
    keyPath: files.key,
  });
  return {
    ca: readFileSync(ca.crt, 'utf8'),
    caPath: ca.crt,
    caKeyPath: ca.key,
    server: identity('127.0.0.1', server),
    client: identity(clientCn, client),
  };
}

// ---------------------------------------------------------------------------------------------
// Processes

/** Every node process group still running in this process, killed on exit. */
const liveGroups = new Set<number>();
/** Temp dirs made by startPyKmip and not yet removed, removed on exit. */
const liveDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const killAll = (): void => {
    for (const pgid of liveGroups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    liveGroups.clear();
    for (const d of liveDirs) rmSync(d, { recursive: true, force: true });
    liveDirs.clear();
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killAll();
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

interface NodeState {
  port: number;
  conf: string;
  logFile: string;
  outFile: string;
  child?: ChildProcess;
  exited?: Promise<void>;
}

export async function startPyKmip(options: StartPyKmipOptions = {}): Promise<PyKmip> {
  const nodeCount = options.nodes ?? 1;
  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  if (!existsSync(PYKMIP_SERVER)) throw new Error(`${PYKMIP_SERVER} not found: install Debian's python3-pykmip (apt-get install -y python3-pykmip)`);
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(path.join(os.tmpdir(), 'vmseal-pykmip-'));
  installExitHook();
  if (ownDir) liveDirs.add(dir);
  const nodes: NodeState[] = [];
  try {
    const certDir = path.join(dir, 'certs');
    const policyDir = path.join(dir, 'policies');
    mkdirSync(certDir, { recursive: true });
    mkdirSync(policyDir, { recursive: true });

    const pki = await generateTestPki(certDir);
    const ca = { crt: pki.caPath, key: pki.caKeyPath };
    const clientCn = pki.client.cn;
    const client = { crt: pki.client.certPath, key: pki.client.keyPath };
    const caPem = pki.ca;
    const clientCert = pki.client.cert;
    const clientKey = pki.client.key;
    const dbPath = path.join(dir, 'pykmip.db');

    for (let i = 0; i < nodeCount; i++) {
      const port = await freePort();
      const conf = path.join(dir, `server-${i}.conf`);
      nodes.push({ port, conf, logFile: path.join(dir, `server-${i}.log`), outFile: path.join(dir, `server-${i}.out`) });
      writeConf(nodes[i]!, { certDir, policyDir, dbPath });
    }

    function writeConf(node: NodeState, p: { certDir: string; policyDir: string; dbPath: string }): void {
      writeFileSync(
        node.conf,
        [
          '[server]',
          'hostname=127.0.0.1',
          `port=${node.port}`,
          `certificate_path=${path.join(p.certDir, 'server.crt')}`,
          `key_path=${path.join(p.certDir, 'server.key')}`,
          `ca_path=${path.join(p.certDir, 'ca.crt')}`,
          'auth_suite=TLS1.2',
          `policy_path=${p.policyDir}`,
          'enable_tls_client_auth=True',
          'tls_cipher_suites=TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384 TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256',
          'logging_level=INFO',
          `database_path=${p.dbPath}`,
          '',
        ].join('\n'),
      );
    }

    const probe = async (node: NodeState): Promise<boolean> => {
      const c = new KmipClient({ endpoints: [{ host: '127.0.0.1', port: node.port }], ca: caPem, cert: clientCert, key: clientKey, timeoutMs: 1500 });
      try {
        await c.discoverVersions();
        return true;
      } catch {
        return false;
      } finally {
        await c.close();
      }
    };

    const launch = async (i: number): Promise<void> => {
      const node = nodes[i]!;
      if (node.child) throw new Error(`PyKMIP node ${i} is already running`);
      const out = openSync(node.outFile, 'a');
      let child: ChildProcess;
      try {
        // detached: the server becomes the leader of its own process group (like setsid), so that
        // a signal to -pid reaches its manager and policy-monitor children too.
        // TMPDIR in the server's folder: Python's multiprocessing makes a pymp-* folder there that a
        // killed server (graceMs 0) never removes; stop() removes it with the folder.
        const serverTmp = path.join(dir, 'tmp');
        mkdirSync(serverTmp, { recursive: true });
        child = spawn(PYTHON, [PYKMIP_SERVER, '-f', node.conf, '-l', node.logFile], {
          cwd: dir,
          env: { ...process.env, TMPDIR: serverTmp },
          detached: true,
          stdio: ['ignore', out, out],
        });
      } finally {
        closeSync(out);
      }
      const pgid = child.pid!;
      liveGroups.add(pgid);
      // A forgotten stop() must not keep the test process alive: the exit hook kills the group.
      child.unref();
      node.child = child;
      let exitedEarly = false;
      node.exited = new Promise<void>((resolve) => {
        child.once('exit', () => {
          exitedEarly = true;
          resolve();
        });
        child.once('error', () => {
          exitedEarly = true;
          resolve();
        });
      });
      const deadline = Date.now() + startTimeoutMs;
      while (Date.now() < deadline) {
        if (exitedEarly) break;
        if (await probe(node)) return;
        await sleep(150);
      }
      const tail = (readSafe(node.logFile) + readSafe(node.outFile)).slice(-2000);
      await stopNode(i);
      throw new Error(`PyKMIP node ${i} on port ${node.port} did not ${exitedEarly ? 'stay up' : `answer within ${startTimeoutMs} ms`}; log tail:\n${tail}`);
    };

    const stopNode = async (i: number, opts: { graceMs?: number } = {}): Promise<void> => {
      const graceMs = opts.graceMs ?? 2000;
      const node = nodes[i];
      if (!node) throw new Error(`no PyKMIP node ${i}`);
      const child = node.child;
      if (!child) return;
      const pgid = child.pid!;
      const signal = (sig: NodeJS.Signals): void => {
        try {
          process.kill(-pgid, sig);
        } catch {
          /* gone */
        }
      };
      signal(graceMs > 0 ? 'SIGINT' : 'SIGKILL');
      const exited = await Promise.race([node.exited!.then(() => true), sleep(graceMs > 0 ? graceMs : 2000).then(() => false)]);
      if (!exited) signal('SIGKILL');
      // The main process may be gone while its children are still shutting down.
      for (let t = 0; t < 30 && groupAlive(pgid); t++) await sleep(100);
      if (groupAlive(pgid)) signal('SIGKILL');
      if (!exited) await Promise.race([node.exited!, sleep(2000)]);
      liveGroups.delete(pgid);
      node.child = undefined;
      node.exited = undefined;
    };

    // One after the other: two nodes starting together race to create the database schema
    // ("table keys already exists") and one of them dies.
    // A free port found by binding port 0 can be taken by someone else before PyKMIP binds it:
    // on a failed first start, try again on another port.
    for (let i = 0; i < nodes.length; i++) {
      for (let attempt = 1; ; attempt++) {
        try {
          await launch(i);
          break;
        } catch (err) {
          if (attempt >= 3) throw err;
          nodes[i]!.port = await freePort();
          writeConf(nodes[i]!, { certDir, policyDir, dbPath });
        }
      }
    }

    let stopped = false;
    const kms: PyKmip = {
      dir,
      endpoints: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
      ca: caPem,
      caPath: ca.crt,
      clientCn,
      clientCert,
      clientKey,
      clientCertPath: client.crt,
      clientKeyPath: client.key,
      providerOptions(id = 'pykmip', identity) {
        return {
          id,
          endpoints: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
          ca: caPem,
          cert: identity?.cert ?? clientCert,
          key: identity?.key ?? clientKey,
        };
      },
      async makeClient(cn: string, opts = {}) {
        const name = `client-${safeName(cn)}`;
        const eku = opts.extendedKeyUsage ?? 'clientAuth';
        const ext = eku === 'none' ? CLIENT_EXT.replace('extendedKeyUsage=clientAuth\n', '') : CLIENT_EXT.replace('clientAuth', eku);
        const id = await issue(certDir, ca, name, cn, ext);
        return { cn, cert: readFileSync(id.crt, 'utf8'), key: readFileSync(id.key, 'utf8'), certPath: id.crt, keyPath: id.key };
      },
      async makeOtherCaClient(cn = clientCn) {
        const tag = safeName('other');
        const otherCa = await makeCa(certDir, `ca-${tag}`, 'vmseal-other-ca');
        const id = await issue(certDir, otherCa, `client-${tag}`, cn, CLIENT_EXT);
        return {
          cn,
          ca: readFileSync(otherCa.crt, 'utf8'),
          cert: readFileSync(id.crt, 'utf8'),
          key: readFileSync(id.key, 'utf8'),
          certPath: id.crt,
          keyPath: id.key,
        };
      },
      stopNode,
      startNode: launch,
      isRunning: (i) => nodes[i]?.child !== undefined,
      log: (i) => readSafe(nodes[i]!.logFile),
      async stop() {
        if (stopped) return;
        stopped = true;
        await Promise.all(nodes.map((_, i) => stopNode(i)));
        if (ownDir) {
          rmSync(dir, { recursive: true, force: true });
          liveDirs.delete(dir);
        }
      },
    };
    return kms;
  } catch (err) {
    for (const node of nodes) {
      if (node.child?.pid) {
        try {
          process.kill(-node.child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        liveGroups.delete(node.child.pid);
      }
    }
    if (ownDir) {
      rmSync(dir, { recursive: true, force: true });
      liveDirs.delete(dir);
    }
    throw err;
  }
}

function readSafe(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}
