/**
 * `vmseal host status|attach|detach|unlock|snapshot`: drive a running `vmseal serve` through its control
 * socket (--control PATH; default `$XDG_RUNTIME_DIR/vmseal/serve.sock`, else `<home>/serve.sock`
 * with home from --home, VMSEAL_HOME or ~/.vmseal — the same rule `vmseal serve` uses).
 * The recovery passphrase of `unlock` is read as everywhere else (file, variable, prompt) and
 * travels only over the 0600 control socket, never on argv.
 */
import { resolve } from 'node:path';
import { controlRequest, defaultControlPath, type ControlRequest, type ExportInfo, type ServeAddress } from '../../serve/index.js';
import type { Ctx } from '../context.js';
import { resolveHome } from '../key-session.js';
import { formatBytes } from '../parse.js';
import { readPassphrase } from '../passphrase.js';
import { requireInputFile } from './common.js';

export interface HostCliOptions {
  control?: string;
  home?: string;
  name?: string;
  readOnly?: boolean;
  shared?: number;
  passphraseFile?: string;
  passphraseEnv?: string;
}

/** An export as the control socket reports it; `locked` and `lockedReason` once locked exports exist. */
type ServedExport = ExportInfo & { uri: string; locked?: boolean; lockedReason?: string };

/** The control socket a command talks to (and `vmseal serve` listens on). */
export function controlPathOf(ctx: Ctx, opts: Pick<HostCliOptions, 'control' | 'home'>): string {
  return resolve(opts.control ?? defaultControlPath(resolveHome(opts.home, ctx.env), ctx.env));
}

function ask(ctx: Ctx, path: string, request: ControlRequest): Promise<unknown> {
  return controlRequest(path, request, { signal: ctx.signal });
}

export async function hostStatus(ctx: Ctx, opts: HostCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = 'cannot get the status of vmseal serve';
  const status = (await ask(ctx, path, { command: 'status' })) as { address: ServeAddress; exports: ServedExport[] };
  ctx.output.result({ ok: true, command: 'host status', control: path, address: status.address, exports: status.exports });
  if (status.exports.length === 0) {
    ctx.output.line('No exports.');
    return;
  }
  const header = ['NAME', 'DISK', 'SIZE', 'ENCRYPTED', 'LOCKED', 'CLIENTS', 'READ', 'WRITTEN'];
  const rows = status.exports.map((e) => [
    e.name,
    e.path,
    formatBytes(e.size),
    e.encrypted ? 'yes' : 'no',
    e.locked === true ? `yes${e.lockedReason ? ` (${e.lockedReason})` : ''}` : 'no',
    `${e.clients}/${e.shared}`,
    formatBytes(e.bytesRead),
    formatBytes(e.bytesWritten),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  // The last column is not padded: no trailing blanks.
  const format = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  ctx.output.line(format(header));
  for (const r of rows) ctx.output.line(format(r));
}

export async function hostAttach(ctx: Ctx, disk: string, opts: HostCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot attach ${disk}`;
  await requireInputFile(disk, 'the disk');
  // The server has its own working directory: send an absolute path.
  const request: ControlRequest = {
    command: 'attach',
    path: resolve(disk),
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    ...(opts.readOnly === true ? { readOnly: true } : {}),
    ...(opts.shared !== undefined ? { shared: opts.shared } : {}),
  };
  const info = (await ask(ctx, path, request)) as ServedExport;
  ctx.output.result({ ok: true, command: 'host attach', control: path, export: info });
  ctx.output.line(`Attached ${info.name} (${info.path}): ${info.uri}`);
}

export async function hostDetach(ctx: Ctx, name: string, opts: HostCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot detach ${name}`;
  await ask(ctx, path, { command: 'detach', name });
  ctx.output.result({ ok: true, command: 'host detach', control: path, name });
  ctx.output.line(`Detached ${name}: flushed, closed, its lock released`);
}

export async function hostUnlock(ctx: Ctx, name: string, opts: HostCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot unlock ${name}`;
  const passphrase = await readPassphrase({
    purpose: `recovery passphrase of export ${name}`,
    ...(opts.passphraseFile !== undefined ? { passphraseFile: opts.passphraseFile } : {}),
    ...(opts.passphraseEnv !== undefined ? { passphraseEnv: opts.passphraseEnv } : {}),
    signal: ctx.signal,
    env: ctx.env,
    io: ctx.io,
  });
  const info = (await ask(ctx, path, { command: 'unlock', name, passphrase })) as ServedExport;
  ctx.output.result({ ok: true, command: 'host unlock', control: path, export: info });
  ctx.output.line(`Unlocked ${info.name}: served on ${info.uri}`);
}

export async function hostSnapshot(ctx: Ctx, name: string, opts: HostCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot take a snapshot of export ${name}`;
  const request: ControlRequest = { command: 'snapshot', name, ...(opts.name !== undefined ? { snapshotName: opts.name } : {}) };
  const info = (await ask(ctx, path, request)) as ServedExport & { parent: string };
  ctx.output.result({ ok: true, command: 'host snapshot', control: path, top: info.path, parent: info.parent, export: info });
  // The new top alone, as `vmseal snapshot create` prints it.
  ctx.output.line(info.path);
}
