/**
 * `vmseal keys init|list|create|backup|restore`: the local keystore (the embedded key provider).
 */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { KeyError, LocalKeyProvider } from '../../keys/index.js';
import type { Ctx } from '../context.js';
import { CliError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import { HOME_PASSPHRASE_ENV, resolveHome } from '../key-session.js';
import { DEFAULT_PASSPHRASE_ENV, readPassphrase, readPassphraseFile } from '../passphrase.js';
import { requireFreeOutput, requireInputFile } from './common.js';

export interface KeysCliOptions {
  home?: string;
  homePassphraseFile?: string;
  withPassphrase?: boolean;
  passphraseFile?: string;
  passphraseEnv?: string;
  name?: string;
  force?: boolean;
}

/** The keystore passphrase, if any: --home-passphrase-file, else VMSEAL_HOME_PASSPHRASE. */
async function homePassphrase(ctx: Ctx, opts: KeysCliOptions): Promise<string | undefined> {
  if (opts.homePassphraseFile !== undefined) return readPassphraseFile(opts.homePassphraseFile);
  const v = ctx.env[HOME_PASSPHRASE_ENV];
  return v !== undefined && v.length > 0 ? v : undefined;
}

async function openProvider(ctx: Ctx, opts: KeysCliOptions, passphrase?: string): Promise<LocalKeyProvider> {
  const pass = passphrase ?? (await homePassphrase(ctx, opts));
  return new LocalKeyProvider({ home: resolveHome(opts.home, ctx.env), ...(pass !== undefined ? { passphrase: pass } : {}) });
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function withProvider<T>(p: LocalKeyProvider, fn: (p: LocalKeyProvider) => Promise<T>): Promise<T> {
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

export async function keysInit(ctx: Ctx, opts: KeysCliOptions): Promise<void> {
  ctx.doing = 'cannot initialise the local keystore';
  let passphrase: string | undefined;
  if (opts.withPassphrase) {
    passphrase =
      opts.homePassphraseFile !== undefined || ctx.env[HOME_PASSPHRASE_ENV] !== undefined
        ? await homePassphrase(ctx, opts)
        : await readPassphrase({
            purpose: 'new keystore passphrase',
            confirm: true,
            minLength: 8,
            signal: ctx.signal,
            // Only the prompt: --passphrase-file and VMSEAL_PASSPHRASE are the recovery/backup passphrase, never the keystore's.
            env: {},
            io: ctx.io,
            noSourceHint: `Give --home-passphrase-file F, or set ${HOME_PASSPHRASE_ENV}`,
          });
  }
  const provider = await openProvider(ctx, opts, passphrase);
  const existed = await exists(provider.keystorePath);
  await withProvider(provider, (p) => p.init());
  const protection = (await exists(provider.masterKeyPath)) ? `master key file ${provider.masterKeyPath}` : 'a passphrase';
  ctx.output.result({
    ok: true,
    command: 'keys init',
    home: provider.home,
    created: !existed,
    keystore: provider.keystorePath,
    protection: protection.startsWith('master') ? 'keyfile' : 'passphrase',
  });
  ctx.output.line(
    existed ? `The keystore in ${provider.home} already exists and opens.` : `Created a keystore in ${provider.home}, protected by ${protection}.`,
  );
  if (!existed) ctx.output.line('Back it up (`vmseal keys backup FILE`): disks locked only by its keys cannot be opened without it.');
}

export async function keysList(ctx: Ctx, opts: KeysCliOptions): Promise<void> {
  ctx.doing = 'cannot list the local keys';
  const provider = await openProvider(ctx, opts);
  const keys = await withProvider(provider, (p) => p.list());
  ctx.output.result({ ok: true, command: 'keys list', home: provider.home, providerId: provider.id, keys });
  if (keys.length === 0) {
    ctx.output.line(`No keys in ${provider.home}.`);
    return;
  }
  const rows = keys.map((k) => [k.keyId, k.state, k.created, k.name ?? ''] as const);
  const w = [36, 9, 24];
  ctx.output.line(`${'KEY ID'.padEnd(w[0]!)}  ${'STATE'.padEnd(w[1]!)}  ${'CREATED'.padEnd(w[2]!)}  NAME`);
  for (const r of rows) ctx.output.line(`${r[0].padEnd(w[0]!)}  ${r[1].padEnd(w[1]!)}  ${r[2].padEnd(w[2]!)}  ${r[3]}`);
}

export async function keysCreate(ctx: Ctx, opts: KeysCliOptions): Promise<void> {
  ctx.doing = 'cannot create a local key';
  const provider = await openProvider(ctx, opts);
  const ref = await withProvider(provider, (p) => p.createKey(opts.name !== undefined ? { name: opts.name } : {}));
  ctx.output.result({ ok: true, command: 'keys create', home: provider.home, ...ref });
  ctx.output.line(`Created key ${ref.keyId} in ${provider.home}`);
}

function backupPassphrase(ctx: Ctx, opts: KeysCliOptions, confirm: boolean): Promise<string> {
  return readPassphrase({
    purpose: confirm ? 'new backup passphrase' : 'backup passphrase',
    confirm,
    ...(confirm ? { minLength: 8 } : {}),
    signal: ctx.signal,
    env: ctx.env,
    io: ctx.io,
    ...(opts.passphraseFile !== undefined ? { passphraseFile: opts.passphraseFile } : {}),
    ...(opts.passphraseEnv !== undefined ? { passphraseEnv: opts.passphraseEnv } : {}),
  });
}

export async function keysBackup(ctx: Ctx, file: string, opts: KeysCliOptions): Promise<void> {
  ctx.doing = `cannot back up the local keystore to ${file}`;
  await requireFreeOutput(file, opts.force);
  const provider = await openProvider(ctx, opts);
  if (!(await exists(provider.keystorePath))) {
    throw new CliError('ERR_KEYSTORE_MISSING', `there is no keystore in ${provider.home}`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Point --home or VMSEAL_HOME at your keystore',
    });
  }
  const passphrase = await backupPassphrase(ctx, opts, true);
  const { keys } = await withProvider(provider, (p) => p.backup(file, passphrase));
  ctx.output.result({ ok: true, command: 'keys backup', home: provider.home, file, keys });
  ctx.output.line(`Wrote ${keys} key${keys === 1 ? '' : 's'} of ${provider.home} to ${file} (encrypted with the backup passphrase)`);
}

export async function keysRestore(ctx: Ctx, file: string, opts: KeysCliOptions): Promise<void> {
  ctx.doing = `cannot restore keys from ${file}`;
  await requireInputFile(file, 'the backup file');
  const passphrase = await backupPassphrase(ctx, opts, false);
  const provider = await openProvider(ctx, opts);
  const { added, unchanged } = await withProvider(provider, (p) => p.restore(file, passphrase)).catch((err: unknown) => {
    // The key layer says "wrong passphrase" with one code for the keystore and the backup; the
    // generic hint names the keystore passphrase, which is the wrong thing to change here.
    if (err instanceof KeyError && err.code === 'ERR_KEYSTORE_PASSPHRASE' && err.file !== undefined && resolve(err.file) === resolve(file)) {
      throw new CliError('ERR_KEYSTORE_PASSPHRASE', err.message, {
        exitCode: ExitCode.KEY,
        hint: `Check the backup passphrase (--passphrase-file F, --passphrase-env NAME or ${DEFAULT_PASSPHRASE_ENV}): it is the one given to \`vmseal keys backup\``,
        cause: err,
      });
    }
    throw err;
  });
  ctx.output.result({ ok: true, command: 'keys restore', home: provider.home, file, added, unchanged });
  ctx.output.line(`Restored ${added} key${added === 1 ? '' : 's'} into ${provider.home} (${unchanged} already there)`);
}
