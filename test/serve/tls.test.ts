// TLS of the NBD server (NBD_OPT_STARTTLS) against qemu's tls-creds-x509: certificates are made
// with openssl at test time; qemu reads ca-cert.pem, client-cert.pem and client-key.pem from a dir.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { serve, type NbdHost } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmseal, vmsealChild } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, plainRaw, random, run, startHost } from './helpers.js';
import { OPT, RawClient, REP_ACK } from './nbd-client.js';

const MiB = 1 << 20;
const REP_ERR_TLS_REQD = 0x80000005;
let tmp: ReturnType<typeof tempDir>;
let certs: string;

/** A CA (its key and certificate as `name`-key.pem / `name`-cert.pem in `dir`). */
async function makeCa(dir: string, name: string): Promise<void> {
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    `/CN=vmseal test ${name}`,
    '-keyout',
    join(dir, `${name}-key.pem`),
    '-out',
    join(dir, `${name}-cert.pem`),
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** A leaf certificate `name`-cert.pem (and key) signed by CA `ca`, for a server or a client. */
async function makeLeaf(dir: string, name: string, ca: string, role: 'server' | 'client', serial: number): Promise<void> {
  const ext = join(dir, `${name}.ext`);
  writeFileSync(
    ext,
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      `extendedKeyUsage=${role === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(role === 'server' ? ['subjectAltName=IP:127.0.0.1,DNS:localhost'] : []),
    ].join('\n'),
  );
  await run('openssl', [
    'req',
    '-new',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    `/CN=${name}`,
    '-keyout',
    join(dir, `${name}-key.pem`),
    '-out',
    join(dir, `${name}.csr`),
  ]);
  await run('openssl', [
    'x509',
    '-req',
    '-in',
    join(dir, `${name}.csr`),
    '-CA',
    join(dir, `${ca}-cert.pem`),
    '-CAkey',
    join(dir, `${ca}-key.pem`),
    '-set_serial',
    String(serial),
    '-days',
    '2',
    '-extfile',
    ext,
    '-out',
    join(dir, `${name}-cert.pem`),
  ]);
}

/**
 * A qemu tls-creds-x509 folder: the CAs (the one that signed the server first), and a client
 * certificate. qemu checks its own certificate against ca-cert.pem too, so a client of another CA
 * needs that CA in the bundle to get as far as the server.
 */
function qemuDir(name: string, client: string, cas: string[] = ['ca']): string {
  const dir = join(tmp.dir, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'ca-cert.pem'), Buffer.concat(cas.map((ca) => readFileSync(join(certs, `${ca}-cert.pem`)))));
  writeFileSync(join(dir, 'client-cert.pem'), readFileSync(join(certs, `${client}-cert.pem`)));
  writeFileSync(join(dir, 'client-key.pem'), readFileSync(join(certs, `${client}-key.pem`)));
  return dir;
}

const pem = (name: string): Buffer => readFileSync(join(certs, name));

function qemuArgs(credsDir: string, port: number, exportName: string): string[] {
  return [
    '--object',
    `tls-creds-x509,id=tls0,dir=${credsDir},endpoint=client`,
    '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=${exportName},tls-creds=tls0`,
  ];
}

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-tls-');
  certs = join(tmp.dir, 'certs');
  mkdirSync(certs);
  await makeCa(certs, 'ca');
  await makeCa(certs, 'other-ca');
  await makeLeaf(certs, 'server', 'ca', 'server', 1);
  await makeLeaf(certs, 'client', 'ca', 'client', 2);
  await makeLeaf(certs, 'stranger', 'other-ca', 'client', 3);
}, 60_000);
afterAll(() => tmp?.cleanup());

describe('TLS with client certificates', () => {
  let host: NbdHost;
  let port: number;
  let content: Buffer;
  const lines: string[] = [];

  beforeAll(async () => {
    content = random(MiB);
    const disk = await encryptedDisk(tmp.dir, 'vm', { subformat: 'monolithicFlat', capacity: 4 * MiB, content, at: MiB });
    host = await serve({
      disks: [{ path: disk, readOnly: true }],
      listen: { host: '127.0.0.1', port: 0 },
      keys: KEYS,
      tls: { cert: pem('server-cert.pem'), key: pem('server-key.pem'), ca: pem('ca-cert.pem') },
      log: (l) => lines.push(l),
    });
    const addr = host.address();
    port = addr.transport === 'tcp' ? addr.port : 0;
  }, 60_000);
  afterAll(async () => {
    await host?.close();
  });

  it('qemu-img info and convert connect with tls-creds-x509 and read the plaintext', async () => {
    const dir = qemuDir('qemu-good', 'client');
    const info = JSON.parse(await run('qemu-img', ['info', '--output=json', ...qemuArgs(dir, port, 'vm')]));
    expect(info['virtual-size']).toBe(4 * MiB);
    const out = join(tmp.dir, 'copy.raw');
    await run('qemu-img', ['convert', '-O', 'raw', ...qemuArgs(dir, port, 'vm'), out]);
    const copy = readFileSync(out);
    expect(copy.length).toBe(4 * MiB);
    expect(copy.subarray(MiB, 2 * MiB).equals(content)).toBe(true);
    expect(copy.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    expect(lines.some((l) => l.includes('TLS on, client certificate verified'))).toBe(true);
  }, 60_000);

  it('refuses a client certificate signed by another CA', async () => {
    const dir = qemuDir('qemu-stranger', 'stranger', ['ca', 'other-ca']);
    const before = lines.length;
    await expect(run('qemu-img', ['info', ...qemuArgs(dir, port, 'vm')])).rejects.toThrow();
    // The server logs the refusal once its side of the connection is over.
    while (!lines.slice(before).some((l) => l.includes(' closed: '))) await new Promise((r) => setTimeout(r, 20));
    expect(lines.slice(before).some((l) => /TLS handshake failed: client certificate refused/.test(l))).toBe(true);
    expect(lines.slice(before).some((l) => l.includes('serving export'))).toBe(false);
  }, 60_000);

  it('tells a plaintext client nothing: LIST and GO get NBD_REP_ERR_TLS_REQD, EXPORT_NAME is hung up on', async () => {
    const c = await RawClient.connectTcp('127.0.0.1', port);
    try {
      await c.handshake();
      c.sendOption(OPT.LIST);
      expect(await c.optionReplies()).toEqual([expect.objectContaining({ option: OPT.LIST, type: REP_ERR_TLS_REQD })]);
      c.sendOption(OPT.GO, RawClient.nameData('vm'));
      expect(await c.optionReplies()).toEqual([expect.objectContaining({ option: OPT.GO, type: REP_ERR_TLS_REQD })]);
      c.sendOption(OPT.INFO, RawClient.nameData('vm'));
      expect((await c.optionReply()).type).toBe(REP_ERR_TLS_REQD);
      c.sendOption(OPT.STRUCTURED_REPLY);
      expect((await c.optionReply()).type).toBe(REP_ERR_TLS_REQD);
      const before = lines.length;
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('vm'));
      expect(await c.closedByServer()).toBe(true);
      while (!lines.slice(before).some((l) => l.includes(' closed: '))) await new Promise((r) => setTimeout(r, 20));
      expect(lines.slice(before).some((l) => l.includes('closed: NBD_OPT_EXPORT_NAME before STARTTLS'))).toBe(true);
    } finally {
      c.close();
    }
    // ABORT is still answered, so a polite client can leave.
    const d = await RawClient.connectTcp('127.0.0.1', port);
    try {
      await d.handshake();
      d.sendOption(OPT.ABORT);
      expect((await d.optionReply()).type).toBe(REP_ACK);
    } finally {
      d.close();
    }
  });

  it('libnbd over nbds:// with tls-certificates reads the export', async () => {
    const dir = qemuDir('libnbd-good', 'client');
    const info = JSON.parse(await run('nbdinfo', ['--json', `nbds://127.0.0.1:${port}/vm?tls-certificates=${dir}`]));
    expect(info.exports[0]).toMatchObject({ 'export-name': 'vm', 'export-size': 4 * MiB });
  });

  it('refuses a TLS client without a certificate', async () => {
    const c = await RawClient.connectTcp('127.0.0.1', port);
    const before = lines.length;
    try {
      await c.handshake();
      c.sendOption(OPT.STARTTLS);
      expect((await c.optionReply()).type).toBe(REP_ACK);
      c.socket.removeAllListeners('data');
      const secure = tlsConnect({ socket: c.socket, ca: pem('ca-cert.pem'), servername: 'localhost' });
      const outcome = await new Promise<string>((resolve) => {
        // TLS 1.3: the client's side may complete before the server refuses; its GO then gets no reply.
        secure.once('secureConnect', () => secure.write(Buffer.concat([Buffer.from('IHAVEOPT'), Buffer.from([0, 0, 0, 7, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0])])));
        secure.on('data', () => resolve('answered'));
        secure.once('error', () => resolve('refused'));
        secure.once('close', () => resolve('refused'));
      });
      expect(outcome).toBe('refused');
      secure.destroy();
    } finally {
      c.close();
    }
    while (!lines.slice(before).some((l) => l.includes(' closed: '))) await new Promise((r) => setTimeout(r, 20));
    expect(lines.slice(before).some((l) => /client certificate refused/.test(l))).toBe(true);
  });

  it('nbdinfo without TLS gets nothing', async () => {
    await expect(run('nbdinfo', ['--list', `nbd://127.0.0.1:${port}`])).rejects.toThrow();
    await expect(run('nbdinfo', [`nbd://127.0.0.1:${port}/vm`])).rejects.toThrow();
  });
});

describe('a client that stalls its TLS handshake', () => {
  it('does not keep close() waiting', async () => {
    const dir = join(tmp.dir, 'stall');
    mkdirSync(dir);
    const disk = plainRaw(dir, 'd', Buffer.alloc(MiB));
    const { host, socket } = await startHost(dir, [{ path: disk }], {
      tls: { cert: pem('server-cert.pem'), key: pem('server-key.pem') },
      // Far beyond the test's timeout: only stop() can end the stalled handshake in time.
      handshakeTimeoutMs: 600_000,
    });
    const c = await RawClient.connect(socket);
    try {
      await c.handshake();
      c.sendOption(OPT.STARTTLS);
      expect((await c.optionReply()).type).toBe(REP_ACK);
      // No ClientHello follows; close() must not wait for the handshake timeout.
      await host.close();
      expect(await c.closedByServer()).toBe(true);
    } finally {
      c.close();
      await host.close();
    }
  }, 20_000);
});

describe('TLS options', () => {
  it('a non-loopback address needs TLS, and client certificates, unless waived', async () => {
    const disk = join(tmp.dir, 'unused.vmdk');
    const base = { disks: [{ path: disk }], listen: { host: '0.0.0.0', port: 0 }, keys: KEYS };
    await expect(serve(base)).rejects.toMatchObject({ code: 'ERR_SERVE_INSECURE' });
    const tls = { cert: pem('server-cert.pem'), key: pem('server-key.pem') };
    await expect(serve({ ...base, tls })).rejects.toMatchObject({ code: 'ERR_SERVE_INSECURE', message: expect.stringMatching(/certificate/) });
  });

  it('unusable credentials are ERR_SERVE_TLS, without the key in the message', async () => {
    const disk = join(tmp.dir, 'unused.vmdk');
    const key = pem('client-key.pem');
    const err = await serve({ disks: [{ path: disk }], keys: KEYS, tls: { cert: pem('server-cert.pem'), key } }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_SERVE_TLS' });
    expect(String((err as Error).message)).not.toContain(key.toString('utf8').split('\n')[1]);
    await expect(serve({ disks: [{ path: disk }], keys: KEYS, tls: { cert: 'not pem', key: 'not pem' } })).rejects.toMatchObject({ code: 'ERR_SERVE_TLS' });
  });
});

describe('vmseal serve --tls-cert/--tls-key/--tls-ca', () => {
  it('serves qemu over TLS, and refuses incomplete or insecure TLS command lines', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home'), XDG_RUNTIME_DIR: undefined });
    const dir = join(tmp.dir, 'cli');
    mkdirSync(dir);
    const disk = plainRaw(dir, 'plain', random(MiB));
    const files = ['--tls-cert', join(certs, 'server-cert.pem'), '--tls-key', join(certs, 'server-key.pem')];
    const noKey = await vmseal(['serve', disk, '--tls-cert', join(certs, 'server-cert.pem')], env);
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toMatch(/--tls-cert and --tls-key go together/);
    const noCa = await vmseal(['serve', disk, '--listen', '0.0.0.0:0', ...files], env);
    expect(noCa.code).toBe(2);
    expect(noCa.stderr).toMatch(/without a certificate.*--tls-ca/s);
    const badKey = await vmseal(
      ['serve', disk, '--socket', join(dir, 's'), '--tls-cert', join(certs, 'server-cert.pem'), '--tls-key', join(certs, 'client-key.pem')],
      env,
    );
    expect(badKey.code).toBe(2);
    expect(badKey.stderr).toMatch(/ERR_SERVE_TLS|cannot be used/);

    const child = vmsealChild(['serve', disk, '--name', 'plain', '--listen', '127.0.0.1:0', ...files, '--tls-ca', join(certs, 'ca-cert.pem')], env);
    let err = '';
    const exit = new Promise<number | null>((done) => child.on('close', (code) => done(code)));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        child.stderr.on('data', (d) => {
          err += String(d);
          const m = /serving plain on nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(err);
          if (m) resolve(Number(m[1]));
        });
        child.once('close', () => reject(new Error(`vmseal serve exited: ${err}`)));
      });
      const info = JSON.parse(await run('qemu-img', ['info', '--output=json', ...qemuArgs(qemuDir('qemu-cli', 'client'), port, 'plain')]));
      expect(info['virtual-size']).toBe(MiB);
      await expect(run('nbdinfo', [`nbd://127.0.0.1:${port}/plain`])).rejects.toThrow();
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exit).toBe(0);
    expect(err).toMatch(/TLS on, client certificate verified/);
  }, 60_000);
});
