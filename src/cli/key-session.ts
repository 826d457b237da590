/**
 * Turns the key options of a command line into key providers, new lockers and unlock options:
 *
 *   local keystore  --home DIR | VMSEAL_HOME | ~/.vmseal  (+ --home-passphrase-file | VMSEAL_HOME_PASSPHRASE)
 *   KMIP            --kms host:port,… --kms-ca F --kms-cert F --kms-key F [--kms-id ID] [--kms-timeout MS]
 *                   (or VMSEAL_KMS, VMSEAL_KMS_CA, VMSEAL_KMS_CERT, VMSEAL_KMS_KEY, VMSEAL_KMS_ID)
 *   passphrase      --passphrase-file F | --passphrase-env NAME | VMSEAL_PASSPHRASE | prompt
 *
 * Unlocking needs no provider choice: a disk's lockers name their providers. The local provider
 * is offered for lockers of its id; every other provider id in the disk becomes a KMIP provider of
 * that id on the --kms servers (so --kms-id is only needed to create keys under another name).
 * One session holds one KeyCache, so a KEK fetched once is not fetched again within a command.
 */
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import {
  describeKeySafe,
  unlockKeySafe,
  KeyCache,
  LocalKeyProvider,
  PHRASE_DEFAULTS,
  type KeyProvider,
  type LockerSpec,
  type UnlockOptions,
} from '../keys/index.js';
// Type only: the KMIP client (TTLV codec, TLS connections) is loaded when a KMIP provider is first
// needed, so that commands using the local keystore or a passphrase do not pay for loading it.
import type { KmipKeyProvider } from '../kmip/index.js';
import { readEncryptionParams } from '../disk/index.js';
import { CliError, usageError } from './errors.js';
import { ExitCode } from './exit-codes.js';
import type { Ctx } from './context.js';
import { parseEndpoints, type Endpoint, type KeyProviderKind } from './parse.js';
import { hasExplicitPassphrase, readPassphrase, readPassphraseFile } from './passphrase.js';

export const DEFAULT_KMS_ID = 'kmip';
export const HOME_PASSPHRASE_ENV = 'VMSEAL_HOME_PASSPHRASE';
/** A recovery passphrase guards the whole disk when the KMS is gone: refuse trivially short ones. */
export const MIN_RECOVERY_PASSPHRASE = 8;

export interface KeyCliOptions {
  home?: string;
  homePassphraseFile?: string;
  kms?: string;
  kmsCa?: string;
  kmsCert?: string;
  kmsKey?: string;
  kmsId?: string;
  kmsTimeout?: number;
  passphraseFile?: string;
  passphraseEnv?: string;
  keyProvider?: KeyProviderKind;
  keyId?: string;
  recoveryPassphrase?: boolean;
  /** Accept retired key-encryption keys (to restore an old backup after a deep rekey). */
  allowRetiredKey?: boolean;
  /** PBKDF2 rounds of new passphrase lockers (--pbkdf2-rounds; default: the library's). */
  pbkdf2Rounds?: number;
}

/** The keystore folder: --home, else VMSEAL_HOME, else ~/.vmseal (always explicit, never left to a default elsewhere). */
/**
 * `--pbkdf2-rounds` sets the rounds of the recovery passphrase locker a command makes; when the other
 * options make none (`makesLocker` false) it would do nothing. Refused up front as a usage error, as
 * cryptsetup refuses an option its action does not use ("Option --pbkdf-force-iterations is not
 * allowed with isLuks action."): silently ignored, it would let the user believe a locker had been
 * made at that cost. `lockerOptions`: the options that would make one, for the message; or, where no
 * option would (`vm rekey`, a `vm tpm` whose state key exists), why none is made and what to do.
 */
export function checkRoundsHaveLocker(rounds: number | undefined, makesLocker: boolean, lockerOptions: string | { why: string; hint: string }): void {
  if (rounds === undefined || makesLocker) return;
  const lead = '--pbkdf2-rounds sets the rounds of a new recovery passphrase locker';
  if (typeof lockerOptions !== 'string') throw usageError(`${lead}, and ${lockerOptions.why}`, lockerOptions.hint);
  throw usageError(`${lead}, and without ${lockerOptions} none is made`, `Add ${lockerOptions}, or drop --pbkdf2-rounds`);
}

export function resolveHome(home: string | undefined, env: NodeJS.ProcessEnv): string {
  if (home !== undefined) return home;
  const fromEnv = env.VMSEAL_HOME;
  return fromEnv !== undefined && fromEnv.length > 0 ? fromEnv : join(homedir(), '.vmseal');
}

/** Key options with the environment variables filled in where the option was not given. */
export function withEnvDefaults(opts: KeyCliOptions, env: NodeJS.ProcessEnv): KeyCliOptions {
  const pick = (v: string | undefined, name: string): string | undefined => v ?? (env[name] !== undefined && env[name] !== '' ? env[name] : undefined);
  const merged: KeyCliOptions = { ...opts, home: resolveHome(opts.home, env) };
  const kms = pick(opts.kms, 'VMSEAL_KMS');
  const kmsCa = pick(opts.kmsCa, 'VMSEAL_KMS_CA');
  const kmsCert = pick(opts.kmsCert, 'VMSEAL_KMS_CERT');
  const kmsKey = pick(opts.kmsKey, 'VMSEAL_KMS_KEY');
  const kmsId = pick(opts.kmsId, 'VMSEAL_KMS_ID');
  if (kms !== undefined) merged.kms = kms;
  if (kmsCa !== undefined) merged.kmsCa = kmsCa;
  if (kmsCert !== undefined) merged.kmsCert = kmsCert;
  if (kmsKey !== undefined) merged.kmsKey = kmsKey;
  if (kmsId !== undefined) merged.kmsId = kmsId;
  return merged;
}

interface KmsConfig {
  endpoints: Endpoint[];
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  timeoutMs: number;
}

/** PEM files are small; anything bigger is not the certificate or key meant. */
const MAX_PEM_BYTES = 1024 * 1024;

async function readPem(path: string, option: string): Promise<Buffer> {
  let pem: Buffer;
  try {
    const st = await stat(path);
    if (!st.isFile() || st.size > MAX_PEM_BYTES) {
      throw new CliError('ERR_CLI_KMS_FILE', `${option} ${path} is not a PEM file (${st.isFile() ? `${st.size} bytes` : 'not a regular file'})`, {
        exitCode: ExitCode.USAGE,
        hint: `Give ${option} the PEM file (text starting with -----BEGIN)`,
      });
    }
    pem = await readFile(path);
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError('ERR_CLI_KMS_FILE', `cannot read ${option} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, {
      exitCode: ExitCode.USAGE,
      hint: `Check the path given to ${option}`,
    });
  }
  if (!pem.includes('-----BEGIN ')) {
    throw new CliError('ERR_CLI_KMS_FILE', `${option} ${path} is not a PEM file (no -----BEGIN line)`, {
      exitCode: ExitCode.USAGE,
      hint: `Give ${option} the PEM file (convert DER with \`openssl x509 -inform der -in F -out F.pem\`)`,
    });
  }
  return pem;
}

export class KeySession {
  readonly cache = new KeyCache();
  private readonly ctx: Ctx;
  private readonly opts: KeyCliOptions;
  /** The unlock passphrase, read once per command (a batch must not prompt per image). */
  private unlockPassphrase: Promise<string> | undefined;
  // Promises, not instances: the images of a batch converted at once ask at the same moment, and
  // must share one provider (one keystore unlock, one KMIP client, one cache entry per KEK).
  private localProvider: Promise<LocalKeyProvider> | undefined;
  private readonly kmipProviders = new Map<string, Promise<KmipKeyProvider>>();
  private kmsConfig: Promise<KmsConfig> | undefined;
  /** Whether the --pbkdf2-rounds warning was printed (once per command: a batch makes a locker per image). */
  private warnedRounds = false;

  constructor(ctx: Ctx, opts: KeyCliOptions) {
    this.ctx = ctx;
    this.opts = withEnvDefaults(opts, ctx.env);
  }

  get options(): Readonly<KeyCliOptions> {
    return this.opts;
  }

  /** Whether a recovery passphrase was given or asked for (--recovery-passphrase, a file, a variable). */
  get passphraseGiven(): boolean {
    return this.opts.recoveryPassphrase === true || hasExplicitPassphrase(this.opts, this.ctx.env);
  }

  /** Whether KMIP servers were configured (by option or environment). */
  get kmsConfigured(): boolean {
    return this.opts.kms !== undefined;
  }

  /** The provider kind for new keys: --key-provider, else kmip when --kms is configured, else local. */
  get newKeyKind(): KeyProviderKind {
    return this.opts.keyProvider ?? (this.kmsConfigured ? 'kmip' : 'local');
  }

  local(): Promise<LocalKeyProvider> {
    this.localProvider ??= (async () => {
      const passphrase = await this.homePassphrase();
      return new LocalKeyProvider({
        home: resolveHome(this.opts.home, this.ctx.env),
        ...(passphrase !== undefined ? { passphrase } : {}),
        ...(this.opts.allowRetiredKey ? { allowRetired: true } : {}),
      });
    })();
    return this.localProvider;
  }

  private async homePassphrase(): Promise<string | undefined> {
    if (this.opts.homePassphraseFile !== undefined) return readPassphraseFile(this.opts.homePassphraseFile);
    const fromEnv = this.ctx.env[HOME_PASSPHRASE_ENV];
    return fromEnv !== undefined && fromEnv.length > 0 ? fromEnv : undefined;
  }

  private loadKmsConfig(): Promise<KmsConfig> {
    this.kmsConfig ??= (async () => {
      const o = this.opts;
      const missing = [
        o.kms === undefined ? '--kms' : '',
        o.kmsCa === undefined ? '--kms-ca' : '',
        o.kmsCert === undefined ? '--kms-cert' : '',
        o.kmsKey === undefined ? '--kms-key' : '',
      ].filter(Boolean);
      if (missing.length > 0) {
        throw usageError(
          `the KMIP key provider needs ${missing.join(', ')}`,
          'Give --kms host:port with --kms-ca, --kms-cert and --kms-key (or VMSEAL_KMS, VMSEAL_KMS_CA, VMSEAL_KMS_CERT, VMSEAL_KMS_KEY)',
        );
      }
      return {
        endpoints: parseEndpoints(o.kms!),
        ca: await readPem(o.kmsCa!, '--kms-ca'),
        cert: await readPem(o.kmsCert!, '--kms-cert'),
        key: await readPem(o.kmsKey!, '--kms-key'),
        timeoutMs: o.kmsTimeout ?? 10_000,
      };
    })();
    return this.kmsConfig;
  }

  /** The KMIP provider named `id` on the configured servers. */
  kmip(id: string = this.opts.kmsId ?? DEFAULT_KMS_ID): Promise<KmipKeyProvider> {
    let p = this.kmipProviders.get(id);
    if (!p) {
      p = Promise.all([this.loadKmsConfig(), import('../kmip/index.js')]).then(
        ([c, { KmipKeyProvider }]) =>
          new KmipKeyProvider({
            id,
            endpoints: c.endpoints,
            ca: c.ca,
            cert: c.cert,
            key: c.key,
            timeoutMs: c.timeoutMs,
            ...(this.opts.allowRetiredKey ? { allowRetired: true } : {}),
          }),
      );
      this.kmipProviders.set(id, p);
    }
    return p;
  }

  /** The provider new keys go to (local keystore or KMIP). */
  async newKeyProvider(): Promise<KeyProvider> {
    return this.newKeyKind === 'kmip' ? this.kmip() : this.local();
  }

  /** Provider ids named by a disk that no configured provider serves (KMIP ids without --kms). */
  readonly unreachableProviders = new Set<string>();

  /** Set when this command used the local keystore for new keys and it did not exist before. */
  newKeystoreHome: string | undefined;

  /** A locker under a new KEK of the chosen provider (or the existing --key-id). */
  async providerLocker(): Promise<LockerSpec> {
    const provider = await this.newKeyProvider();
    if (provider instanceof LocalKeyProvider) {
      const existed = await stat(provider.keystorePath).then(
        () => true,
        () => false,
      );
      if (!existed) this.newKeystoreHome = provider.home;
    }
    return { kind: 'provider', provider, ...(this.opts.keyId !== undefined ? { keyId: this.opts.keyId } : {}) };
  }

  /** A passphrase locker with a new recovery passphrase (prompted twice on a terminal). */
  async recoveryLocker(purpose = 'new recovery passphrase', kdf?: 'workstation'): Promise<LockerSpec> {
    const passphrase = await readPassphrase({
      purpose,
      confirm: true,
      minLength: MIN_RECOVERY_PASSPHRASE,
      signal: this.ctx.signal,
      env: this.ctx.env,
      io: this.ctx.io,
      ...(this.opts.passphraseFile !== undefined ? { passphraseFile: this.opts.passphraseFile } : {}),
      ...(this.opts.passphraseEnv !== undefined ? { passphraseEnv: this.opts.passphraseEnv } : {}),
    });
    return this.phraseLocker(passphrase, kdf);
  }

  /**
   * A passphrase locker for `passphrase` (in Workstation's construction with `kdf`), with
   * --pbkdf2-rounds' rounds if given, warned about below that construction's default.
   */
  phraseLocker(passphrase: string | Uint8Array, kdf?: 'workstation'): LockerSpec {
    const rounds = this.opts.pbkdf2Rounds;
    const base: LockerSpec = kdf ? { kind: 'passphrase', passphrase, kdf } : { kind: 'passphrase', passphrase };
    if (rounds === undefined) return base;
    const fallback = kdf === 'workstation' ? PHRASE_DEFAULTS.workstationRounds : PHRASE_DEFAULTS.pbkdf2Sha256Rounds;
    if (rounds < fallback && !this.warnedRounds) {
      this.warnedRounds = true;
      this.ctx.output.note(
        `warning: --pbkdf2-rounds ${rounds} is below the default ${fallback}: the passphrase is that much faster to guess from a copy of the disk`,
      );
    }
    return { ...base, rounds };
  }

  /** Lockers for a new DEK: a provider locker, plus a recovery passphrase if asked. */
  async newLockers(): Promise<LockerSpec[]> {
    const lockers = [await this.providerLocker()];
    if (this.opts.recoveryPassphrase) lockers.push(await this.recoveryLocker());
    return lockers;
  }

  /**
   * How to unlock `disk`: the providers its lockers name (local, and KMIP ones if --kms is given),
   * the recovery passphrase if one was given explicitly (file or variable) or --recovery-passphrase
   * asks for it (then a prompt is allowed), and the session's cache.
   */
  async unlockOptions(disk?: string, opts: { usePassphrase?: boolean; format?: 'vmdk' | 'raw'; keySafe?: string } = {}): Promise<UnlockOptions> {
    const providers: KeyProvider[] = [];
    const ids = new Set<string>();
    const format = opts.format ? { format: opts.format } : {};
    // `keySafe`: the lockers are not a disk's (a .vmx's config key): its text names the providers.
    if (opts.keySafe !== undefined) {
      for (const l of describeKeySafe(opts.keySafe)) if (l.kind === 'provider' && l.providerId !== undefined) ids.add(l.providerId);
    } else if (disk !== undefined) {
      const params = await readEncryptionParams(disk, format).catch(() => null);
      if (params) {
        for (const l of describeKeySafe(params.keySafe)) if (l.kind === 'provider' && l.providerId !== undefined) ids.add(l.providerId);
      }
    }
    const local = await this.local();
    providers.push(local);
    if (!this.kmsConfigured) for (const id of ids) if (id !== local.id) this.unreachableProviders.add(id);
    if (this.kmsConfigured) {
      if (this.opts.kmsId !== undefined) ids.add(this.opts.kmsId);
      for (const id of ids) if (id !== local.id) providers.push(await this.kmip(id));
      if (ids.size === 0) providers.push(await this.kmip());
    }
    const usePassphrase = opts.usePassphrase ?? this.passphraseGiven;
    const unlock: UnlockOptions = { providers, cache: this.cache };
    if (usePassphrase) {
      unlock.passphrase = await (this.unlockPassphrase ??= readPassphrase({
        purpose: `${opts.keySafe !== undefined ? 'passphrase' : 'recovery passphrase'}${disk ? ` of ${disk}` : ''}`,
        signal: this.ctx.signal,
        env: this.ctx.env,
        io: this.ctx.io,
        ...(this.opts.passphraseFile !== undefined ? { passphraseFile: this.opts.passphraseFile } : {}),
        ...(this.opts.passphraseEnv !== undefined ? { passphraseEnv: this.opts.passphraseEnv } : {}),
      }));
      if (disk !== undefined && opts.keySafe === undefined) await this.checkPassphrase(disk, unlock.passphrase, format);
    }
    return unlock;
  }

  /** Disks whose recovery passphrase was already checked in this session (a batch checks each once). */
  private readonly passphraseChecked = new Set<string>();

  /**
   * Check that the passphrase the user gave opens `disk` by itself. The unlock tries every means and
   * takes the first that works, so a wrong passphrase would be silently outvoted by the keystore and
   * a recovery drill (`vmseal verify DISK --passphrase-file F`) would pass with the wrong passphrase.
   */
  private async checkPassphrase(disk: string, passphrase: string | Uint8Array | undefined, format: { format?: 'vmdk' | 'raw' }): Promise<void> {
    if (passphrase === undefined || this.passphraseChecked.has(disk)) return;
    const params = await readEncryptionParams(disk, format).catch(() => null);
    if (!params) return; // not an encrypted disk: the command reports that itself
    if (!describeKeySafe(params.keySafe).some((l) => l.kind === 'passphrase')) {
      throw new CliError('ERR_WRONG_KEY', `${disk} has no recovery passphrase locker, so the given recovery passphrase cannot open it`, {
        exitCode: ExitCode.KEY,
        hint: 'Drop the passphrase options (and VMSEAL_PASSPHRASE) to use its key provider, or add a recovery passphrase with `vmseal rekey DISK --shallow --add-recovery-passphrase`',
      });
    }
    try {
      const opened = await unlockKeySafe(params.keySafe, { passphrase });
      opened.key.fill(0);
    } catch (err) {
      if ((err as { code?: unknown })?.code !== 'ERR_WRONG_KEY') throw err;
      throw new CliError('ERR_WRONG_KEY', `the given recovery passphrase does not open ${disk}`, {
        exitCode: ExitCode.KEY,
        hint: 'Check the passphrase in --passphrase-file, --passphrase-env or VMSEAL_PASSPHRASE (`vmseal info DISK` lists the lockers)',
        cause: err,
      });
    }
    this.passphraseChecked.add(disk);
  }

  /** Close KMIP connections and wipe cached KEKs. */
  async close(): Promise<void> {
    this.cache.clear();
    await Promise.all([...this.kmipProviders.values()].map((p) => p.then((k) => k.close()).catch(() => undefined)));
    const local = (await this.localProvider?.catch(() => undefined)) as { close?: () => Promise<void> } | undefined;
    await local?.close?.().catch(() => undefined);
  }
}

/** Run `fn` with a key session that is closed afterwards whatever happens. */
export async function withKeys<T>(ctx: Ctx, opts: KeyCliOptions, fn: (keys: KeySession) => Promise<T>): Promise<T> {
  const session = new KeySession(ctx, opts);
  try {
    return await fn(session);
  } catch (err) {
    // "Locked" because no KMS was configured at all is a different fix than a KMS that is down.
    const code = (err as { code?: unknown })?.code;
    if ((code === 'ERR_DISK_LOCKED' || code === 'ERR_NO_KEY') && session.unreachableProviders.size > 0) {
      const ids = [...session.unreachableProviders].join(', ');
      throw new CliError(code, (err as Error).message, {
        exitCode: ExitCode.KEY,
        hint: `The disk's key is held by the KMIP provider ${ids}: give --kms host:port with --kms-ca, --kms-cert and --kms-key (or VMSEAL_KMS, …), or the disk's recovery passphrase`,
        cause: err,
      });
    }
    throw err;
  } finally {
    await session.close();
  }
}
