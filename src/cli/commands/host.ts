/**
 * `vmseal host status|attach|detach|unlock|snapshot|commit|backup`: drive a running `vmseal serve` through its control
 * socket (--control PATH; default `$XDG_RUNTIME_DIR/vmseal/serve.sock`, else `<home>/serve.sock`
 * with home from --home, VMSEAL_HOME or ~/.vmseal — the same rule `vmseal serve` uses).
 * The recovery passphrase of `unlock` is read as everywhere else (file, variable, prompt) and
 * travels only over the 0600 control socket, never on argv.
 */
import { resolve } from 'node:path';
import { BackupError, createBackup } from '../../backup/index.js';
import { openRepository } from '../../backup/repository.js';
import { controlRequest, defaultControlPath, type ControlRequest, type ExportInfo, type ServeAddress } from '../../serve/index.js';
import type { Ctx } from '../context.js';
import { resolveHome } from '../key-session.js';
import { formatBytes } from '../parse.js';
import { readPassphrase } from '../passphrase.js';
import { requireInputFile } from './input-file.js';
import { chainLayers } from './snapshot.js';

export interface HostCliOptions {
  control?: string;
  home?: string;
  name?: string;
  readOnly?: boolean;
  shared?: number;
  passphraseFile?: string;
  passphraseEnv?: string;
}

export interface HostBackupCliOptions extends Pick<HostCliOptions, 'control' | 'home'> {
  /** The point's name. */
  name?: string;
  history?: string;
  allowPlain?: boolean;
  /** Seconds to wait for the repository lock. */
  wait?: number;
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

/** The reply of the control command `commit`. */
type Committed = ServedExport & { removed: string; bytesMoved: number; heldMs: number };

export interface HostCommitCliOptions extends Pick<HostCliOptions, 'control' | 'home'> {
  /** Merge every layer down to the base, one live commit per layer. */
  all?: boolean;
}

export async function hostCommit(ctx: Ctx, name: string, opts: HostCommitCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot commit the snapshot of export ${name}`;
  const commits: Committed[] = [];
  for (;;) {
    const info = (await ask(ctx, path, { command: 'commit', name })) as Committed;
    commits.push(info);
    // --all: one live commit per layer, top first, while the export still serves a chain. Writes
    // run between the commits, so each one holds them only for its own layer's copy.
    if (opts.all !== true || (await chainLayers(info.path)).length <= 1) break;
    ctx.doing = `committed ${commits.map((c) => c.removed).join(', ')} of export ${name}, but cannot commit the next layer (vmseal host commit ${name} --all goes on)`;
  }
  const last = commits[commits.length - 1]!;
  const bytesMoved = commits.reduce((n, c) => n + c.bytesMoved, 0);
  ctx.output.result({
    ok: true,
    command: 'host commit',
    control: path,
    top: last.path,
    removed: last.removed,
    bytesMoved,
    heldMs: last.heldMs,
    ...(opts.all === true ? { commits: commits.map((c) => ({ removed: c.removed, top: c.path, bytesMoved: c.bytesMoved, heldMs: c.heldMs })) } : {}),
    export: last,
  });
  // The new top alone, as `vmseal snapshot commit` prints it.
  ctx.output.line(last.path);
  for (const c of commits) ctx.output.note(`merged ${c.removed} (${formatBytes(c.bytesMoved)}); writes waited ${c.heldMs} ms`);
}

/**
 * A consistent backup point of a served disk: a live snapshot (through the server), a backup of
 * the frozen layer from this process — it is read-only from then on, so it needs neither the
 * server nor a key — then a live commit of the child back into it (through the server), so that
 * the export serves what it served before (one layer: the disk's change bitmap then counts from the
 * new point).
 * An export that serves a chain already (a snapshot taken by hand, `vmseal snapshot create` before
 * serving) works the same way: the frozen layer is then a chain layer, backed up as a chain point
 * (the chain's merged view, docs/backup.md), and the commit merges the new child back into it, so
 * the export serves the chain it served before. A backup that fails is followed by the commit too.
 */
export async function hostBackup(ctx: Ctx, name: string, repo: string, opts: HostBackupCliOptions): Promise<void> {
  const path = controlPathOf(ctx, opts);
  ctx.doing = `cannot back up export ${name}`;
  // Checked before the snapshot: a wrong REPO leaves nothing behind.
  await openRepository(repo);
  const status = (await ask(ctx, path, { command: 'status' })) as { exports: ServedExport[] };
  const served = status.exports.find((e) => e.name === name);
  if (served && served.locked !== true && !served.readOnly) {
    if (!served.encrypted && opts.allowPlain !== true) {
      throw new BackupError(
        'ERR_BACKUP_PLAIN',
        `export ${name} serves a plain disk (${served.path}): its point would hold plaintext; give --allow-plain to back it up anyway`,
      );
    }
  }
  // Unknown, locked and read-only exports are refused by the server with their own codes.
  const snap = (await ask(ctx, path, { command: 'snapshot', name })) as ServedExport & { parent: string };
  ctx.doing = `took the snapshot ${snap.path} of export ${name}, but cannot back up its frozen layer ${snap.parent}`;
  let r: Awaited<ReturnType<typeof createBackup>>;
  try {
    r = await createBackup(snap.parent, repo, {
      lockWaitMs: (opts.wait ?? 0) * 1000,
      signal: ctx.signal,
      ...(opts.name !== undefined ? { name: opts.name } : {}),
      ...(opts.history !== undefined ? { history: opts.history } : {}),
      ...(opts.allowPlain === true ? { allowPlain: true } : {}),
    });
  } catch (err) {
    // The backup's error is the one to report; the snapshot is merged back all the same (not on
    // Ctrl-C: the control request would be aborted too), else the export stays a chain.
    if (!ctx.signal.aborted) {
      await ask(ctx, path, { command: 'commit', name }).then(
        () => ctx.output.note(`the snapshot ${snap.path} was committed back into ${snap.parent}`),
        (e: Error) => ctx.output.note(`the snapshot ${snap.path} could not be committed back (${e.message}): run vmseal host commit ${name}`),
      );
    }
    throw err;
  }
  ctx.doing = `backed up export ${name} as point ${r.point}, but cannot commit its snapshot ${snap.path} back into ${snap.parent} (vmseal host commit ${name} retries)`;
  const done = (await ask(ctx, path, { command: 'commit', name })) as Committed;
  ctx.output.result({
    ok: true,
    command: 'host backup',
    control: path,
    ...r,
    frozen: snap.parent,
    top: done.path,
    committed: { removed: done.removed, bytesMoved: done.bytesMoved, heldMs: done.heldMs },
  });
  ctx.output.line(r.point);
  ctx.output.note(
    `backed up ${snap.parent} (frozen by a live snapshot, committed back: writes waited ${done.heldMs} ms): ${r.chunks} chunks, ${r.newChunks} new, ${r.chunksRead} read`,
  );
}
