/**
 * `vmseal serve DISK… [--socket PATH | --listen HOST:PORT] [--name N] [--export N=DISK…] [--read-only]
 * [--shared N] [--no-list] [--tls-cert F --tls-key F [--tls-ca F]] [--insecure-plaintext]
 * [--insecure-no-client-auth] [--stall-timeout MS] [--control PATH]` and the unlock options of decrypt: serve disks
 * over NBD in the foreground until SIGINT/SIGTERM, then flush every export, release the locks,
 * remove the sockets and exit 0 (non-zero if an export failed to flush or close). `vmseal host …`
 * drives it meanwhile through the control socket (default: see controlPathOf).
 */
import { readFile } from 'node:fs/promises';
import { serve, vmServeDisks, type NbdHost, type ServeDisk, type ServeListen, type ServeTls } from '../../serve/index.js';
import { isStateFile, readStateFileHeader } from '../../vm/index.js';
import { refuseMixedVmDisks } from '../../vm/disk-vm.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { requireInputFile } from './input-file.js';
import { controlPathOf } from './host.js';

export interface ServeCliOptions extends KeyCliOptions {
  socket?: string;
  listen?: string;
  name?: string;
  export?: string[];
  readOnly?: boolean;
  shared?: number;
  stallTimeout?: number;
  /** Commander's --no-list: false when given. */
  list?: boolean;
  insecurePlaintext?: boolean;
  insecureNoClientAuth?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  control?: string;
  /** A qemu VM folder: its disks and its UEFI variables (`<name>-vars`). */
  vm?: string;
  allowMixed?: boolean;
}

/** NBD's registered port, used when --listen gives none. */
export const NBD_PORT = 10809;

/** HOST:PORT, [IPv6]:PORT or HOST (port 10809; 0 picks a free one). */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?$/.exec(value);
  const port = m?.[3] === undefined ? NBD_PORT : Number(m[3]);
  if (!m || port > 65535) {
    throw usageError(`--listen ${JSON.stringify(value)} is not HOST:PORT`, 'Give e.g. --listen 127.0.0.1:10809 (IPv6 in brackets: [::1]:10809)');
  }
  return { host: (m[1] ?? m[2])!, port };
}

/** The disks to serve, from DISK arguments, --name and --export, then `more` (those of --vm). */
export function serveDisks(disks: readonly string[], opts: Pick<ServeCliOptions, 'name' | 'export'>, more: readonly ServeDisk[] = []): ServeDisk[] {
  const out: ServeDisk[] = [];
  if (opts.name !== undefined && (disks.length !== 1 || (opts.export ?? []).length > 0)) {
    throw usageError('--name names the one DISK served', 'With several disks, name each with --export NAME=DISK');
  }
  for (const path of disks) out.push({ path, ...(opts.name !== undefined ? { name: opts.name } : {}) });
  for (const e of opts.export ?? []) {
    const eq = e.indexOf('=');
    if (eq <= 0 || eq === e.length - 1) throw usageError(`--export ${JSON.stringify(e)} is not NAME=DISK`, 'Give e.g. --export web=web-enc.vmdk');
    out.push({ name: e.slice(0, eq), path: e.slice(eq + 1) });
  }
  out.push(...more);
  if (out.length === 0) throw usageError('no disk to serve', 'Give DISK arguments, --export NAME=DISK or --vm DIR');
  return out;
}

function listenOf(opts: ServeCliOptions): ServeListen | undefined {
  if (opts.socket !== undefined && opts.listen !== undefined) throw usageError('--socket and --listen contradict each other', 'Give one of them');
  if (opts.socket !== undefined) return { socket: opts.socket };
  if (opts.listen !== undefined) return parseListen(opts.listen);
  return undefined;
}

/** The TLS files, read into memory (serve() takes PEM text); undefined without --tls-cert/--tls-key. */
export async function readTlsFiles(opts: Pick<ServeCliOptions, 'tlsCert' | 'tlsKey' | 'tlsCa'>): Promise<ServeTls | undefined> {
  if (opts.tlsCert === undefined && opts.tlsKey === undefined) {
    if (opts.tlsCa !== undefined) throw usageError('--tls-ca needs --tls-cert and --tls-key', "Give the server's certificate and key too");
    return undefined;
  }
  if (opts.tlsCert === undefined || opts.tlsKey === undefined) {
    throw usageError('--tls-cert and --tls-key go together', "Give both the server's PEM certificate and its PEM private key");
  }
  await requireInputFile(opts.tlsCert, 'the TLS certificate');
  await requireInputFile(opts.tlsKey, 'the TLS key');
  if (opts.tlsCa !== undefined) await requireInputFile(opts.tlsCa, 'the TLS CA');
  return {
    cert: await readFile(opts.tlsCert),
    key: await readFile(opts.tlsKey),
    ...(opts.tlsCa !== undefined ? { ca: await readFile(opts.tlsCa) } : {}),
  };
}

function untilAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((done) => signal.addEventListener('abort', () => done(), { once: true }));
}

export async function serveCommand(ctx: Ctx, disks: string[], opts: ServeCliOptions): Promise<void> {
  ctx.doing = 'cannot serve';
  const specs = serveDisks(disks, opts, opts.vm === undefined ? [] : await vmServeDisks(opts.vm, { allowMixed: opts.allowMixed === true }));
  const listen = listenOf(opts);
  const tls = await readTlsFiles(opts);
  for (const d of specs) await requireInputFile(d.path, 'the disk');
  const control = controlPathOf(ctx, opts);
  const log = (line: string): void => {
    if (!ctx.output.quiet) ctx.output.error(`vmseal: ${line}`);
  };
  await withKeys(ctx, opts, async (keys) => {
    // The all-or-none rule for disks named one by one, as --vm applies it (docs/vm.md).
    if (opts.allowMixed !== true) {
      const vmDisks = new Set((opts.vm === undefined ? [] : await vmServeDisks(opts.vm, { allowMixed: true })).map((d) => d.path));
      await refuseMixedVmDisks(
        specs.map((d) => d.path).filter((p) => !vmDisks.has(p)),
        {
          command: 'vmseal serve',
          keys: await keys.unlockOptions(undefined, { usePassphrase: keys.passphraseGiven }),
          unchecked: (dir, why) => log(`the disks of the VM in ${dir} are not checked for the all-or-none rule: ${why}`),
        },
      );
    }
    const host: NbdHost = await serve({
      disks: specs,
      ...(listen ? { listen } : {}),
      // A state file's KeySafe is in its own header, not in a VMDK descriptor: it names the providers.
      keys: async (path) =>
        (await isStateFile(path)) ? keys.unlockOptions(path, { keySafe: (await readStateFileHeader(path)).keySafe }) : keys.unlockOptions(path),
      readOnly: opts.readOnly === true,
      ...(opts.shared !== undefined ? { shared: opts.shared } : {}),
      ...(opts.stallTimeout !== undefined ? { stallTimeoutMs: opts.stallTimeout } : {}),
      noList: opts.list === false,
      ...(tls ? { tls } : {}),
      insecurePlaintext: opts.insecurePlaintext === true,
      insecureNoClientAuth: opts.insecureNoClientAuth === true,
      control,
      log,
    });
    ctx.doing = 'serving failed';
    try {
      // The line tests and scripts wait for: the server accepts clients from here on.
      // A locked export (its key provider unreachable) is listed too: it is served once its key comes.
      for (const e of host.exports()) {
        ctx.output.error(`vmseal: serving ${e.name} on ${host.uri(e.name)}${e.locked ? ` (locked: ${e.lockedReason ?? 'key unavailable'})` : ''}`);
      }
      ctx.output.error(`vmseal: control socket ${control} (vmseal host status|attach|detach|unlock|snapshot --control ${control})`);
      await untilAborted(ctx.signal);
      log('stopping: flushing every export and releasing the locks');
    } finally {
      await host.close();
    }
    const served = host.exports();
    ctx.output.result({ ok: true, command: 'serve', address: host.address(), control, exports: served });
  });
}
