/**
 * The command tree: every command, option and help text of `vmseal`. The actions live in
 * ./commands/; this file only declares the grammar (docs/cli.md describes the same in prose).
 */
import { Command, Option } from 'commander';
import type { Ctx } from './context.js';
import { MAX_DEFAULT_JOBS, MAX_JOBS } from './batch-limits.js';
import { usageError } from './errors.js';
import type { Streams } from './output.js';
// Leaf modules only (test/cli/startup.test.ts): this file is loaded by every `vmseal` process.
import { DEFAULT_CIPHER, DEFAULT_UNIT_SIZE, MAX_UNIT_SIZE } from '../disk/params.js';
import { MAX_CHUNK } from '../pipeline/chunk-limits.js';
import { DEFAULT_ROUNDS } from '../keys/kdf-limits.js';
import {
  CIPHERS,
  ENCRYPTED_SUBFORMATS,
  parseCipher,
  parseFormat,
  parseInteger,
  parseKeyProvider,
  parseMode,
  parsePbkdf2Rounds,
  parseSize,
  parseSubformat,
  parseUnitSize,
  SUBFORMATS,
  UNIT_SIZES,
} from './parse.js';

const VERSION = '0.1.0';
const CONTROL_DEFAULT = '$XDG_RUNTIME_DIR/vmseal/serve.sock, else HOME/serve.sock';

/**
 * Each command's module, imported when the command runs: start-up then loads only the grammar
 * (commander) and the command that was asked for, not every layer below every command — the TLS
 * stack of KMIP and serve, the VMDK writers, the progress bar — which is a large part of a short
 * job's wall time. tsup splits each into its own chunk of dist/cli/.
 */
const commands = {
  encrypt: () => import('./commands/encrypt.js'),
  decrypt: () => import('./commands/decrypt.js'),
  convert: () => import('./commands/convert.js'),
  rekey: () => import('./commands/rekey.js'),
  info: () => import('./commands/info.js'),
  snapshot: () => import('./commands/snapshot.js'),
  verify: () => import('./commands/verify.js'),
  resume: () => import('./commands/resume.js'),
  repair: () => import('./commands/repair.js'),
  keys: () => import('./commands/keys.js'),
  demo: () => import('./commands/demo.js'),
  serve: () => import('./commands/serve.js'),
  host: () => import('./commands/host.js'),
  vm: () => import('./commands/vm.js'),
  backup: () => import('./commands/backup.js'),
  backupCreate: () => import('./commands/backup-create.js'),
  vmTpm: () => import('./commands/vm-tpm.js'),
  vmRekey: () => import('./commands/vm-rekey.js'),
};

/** `--export NAME=DISK` (repeatable), collected by commander; commands/serve.ts parses each. */
function collectExport(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

const EXIT_CODES_HELP = `
Exit codes:
  0    success
  1    the operation failed (I/O, no space, output exists, a batch image failed)
  2    usage error (bad command line)
  3    no key opens the disk (wrong passphrase or key, disk locked)
  4    the key server (KMS) is unavailable
  5    not a valid or supported image, or encrypted where plain was expected (or the reverse)
  6    verification found a mismatch
  7    another vmseal process, or qemu (a VM, qemu-img, qemu-nbd), is using the disk or a file of the output
  70   internal error (a bug)
  130  interrupted (Ctrl-C); half-written output was removed

Environment: VMSEAL_HOME (local keystore folder), VMSEAL_PASSPHRASE (recovery passphrase),
VMSEAL_HOME_PASSPHRASE (keystore passphrase), VMSEAL_KMS, VMSEAL_KMS_CA, VMSEAL_KMS_CERT,
VMSEAL_KMS_KEY, VMSEAL_KMS_ID (KMIP server), VMSEAL_DEBUG=1 (stack traces of internal errors).
Passphrases are never taken from the command line. Full guide: docs/cli.md.`;

/** Options that choose and reach key providers; `create` adds the ones that make new lockers. */
function addKeyOptions(cmd: Command, create: boolean): Command {
  cmd
    .addOption(new Option('--home <dir>', 'local keystore folder (env: VMSEAL_HOME; default: ~/.vmseal)'))
    .addOption(
      new Option(
        '--home-passphrase-file <file>',
        "file holding the local keystore's passphrase, if it has one (env: VMSEAL_HOME_PASSPHRASE holds the passphrase itself)",
      ),
    )
    .addOption(new Option('--kms <host:port,...>', 'KMIP server(s) of one cluster, tried in order (env: VMSEAL_KMS)'))
    .addOption(new Option('--kms-ca <file>', "PEM CA certificate that signed the KMIP servers' certificates (env: VMSEAL_KMS_CA)"))
    .addOption(new Option('--kms-cert <file>', 'PEM client certificate for the KMIP server (env: VMSEAL_KMS_CERT)'))
    .addOption(new Option('--kms-key <file>', 'PEM private key of the client certificate (env: VMSEAL_KMS_KEY)'))
    .addOption(
      new Option(
        '--kms-id <id>',
        'name of the KMIP key provider recorded in the disk (default: kmip; when unlocking, the names in the disk are used) (env: VMSEAL_KMS_ID)',
      ),
    )
    .addOption(
      new Option('--kms-timeout <ms>', 'per-server timeout in milliseconds')
        .default(10_000)
        .argParser((v) => parseInteger(v, '--kms-timeout', { min: 1, max: 3_600_000 })),
    )
    .addOption(new Option('--passphrase-file <file>', 'file holding the recovery passphrase'))
    .addOption(new Option('--passphrase-env <name>', 'environment variable holding the recovery passphrase (default: VMSEAL_PASSPHRASE)'))
    .addOption(new Option('--allow-retired-key', 'accept a key-encryption key that a deep rekey retired (to restore an old backup of a disk)'));
  if (create) {
    cmd
      .addOption(
        new Option('--key-provider <kind>', 'where the new key-encryption key lives: local or kmip (default: kmip if --kms is given, else local)').argParser(
          parseKeyProvider,
        ),
      )
      .addOption(new Option('--key-id <id>', 'use this existing key of the provider instead of creating a new one'))
      .addOption(
        new Option(
          '--pbkdf2-rounds <n>',
          `PBKDF2 rounds of new passphrase lockers (default: ${DEFAULT_ROUNDS.pbkdf2Sha256}, --workstation ${DEFAULT_ROUNDS.workstation}; fewer are faster to guess: a warning is printed)`,
        ).argParser(parsePbkdf2Rounds),
      );
  }
  return cmd;
}

function addJobOptions(cmd: Command, withForce = true): Command {
  if (withForce) cmd.addOption(new Option('--force', 'replace an existing output'));
  return cmd
    .addOption(new Option('--chunk-size <size>', 'bytes per read/encrypt/write step (a multiple of 4K)').argParser(parseChunkSize).hideHelp())
    .addOption(new Option('--threads <n>', 'encryption threads').argParser((v) => parseInteger(v, '--threads', { min: 1, max: 256 })).hideHelp());
}

function addEncryptionParams(cmd: Command): Command {
  return cmd
    .addOption(new Option('--cipher <cipher>', `data cipher: ${CIPHERS.join(' or ')}`).default(DEFAULT_CIPHER).argParser(parseCipher))
    .addOption(new Option('--unit-size <bytes>', `XTS data-unit size: ${UNIT_SIZES.join(' or ')}`).default(DEFAULT_UNIT_SIZE).argParser(parseUnitSize));
}

// Chunks are whole data units of every unit size a disk may have (the pipeline's CHUNK_ALIGN).
const CHUNK_ALIGN = MAX_UNIT_SIZE;

function parseChunkSize(v: string): number {
  const n = parseSize(v, '--chunk-size', { min: CHUNK_ALIGN, max: MAX_CHUNK });
  if (n % CHUNK_ALIGN !== 0) throw usageError(`--chunk-size ${JSON.stringify(v)} is not a multiple of ${CHUNK_ALIGN / 1024} KiB`, 'e.g. --chunk-size 8M');
  return n;
}

// `choices` lists only what the command accepts: help must not offer a value the command refuses.
const subformatOption = (what: string, choices: readonly string[] = SUBFORMATS): Option =>
  new Option('--subformat <name>', `${what}: ${choices.join(', ')}`).argParser((v) => parseSubformat(v));

// Says what a file read is instead of guessing it from its name and content (which the guest of a
// raw image writes): every command that reads a disk takes it.
const formatOption = (what: string, flag = '--format'): Option =>
  new Option(`${flag} <kind>`, `${what} is: vmdk or raw (default: .raw/.img are raw, otherwise detected from the content)`).argParser((v) =>
    parseFormat(v, flag),
  );

/**
 * The command tree of `vmseal`. With `argv`, only the top-level command that argv asks for is
 * declared when it names one (what commander prints and checks for that command is the same);
 * without it, or when argv names none, every command is.
 */
export function buildProgram(ctx: Ctx, streams: Streams, argv?: readonly string[]): Command {
  const program = new Command('vmseal');
  program
    .description('Encrypt virtual machine disks (VMDK and raw images) the way vSphere VM Encryption does.')
    .version(VERSION, '-V, --version')
    .option('--json', 'machine output: one JSON object per command on stdout')
    .option('-q, --quiet', 'print nothing but errors')
    .option('--no-progress', 'no progress bar (it is only shown when stderr is a terminal anyway)')
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (s) => void streams.stdout.write(s),
      // Commander's own error lines are replaced by vmseal's one-line errors (see app.ts).
      writeErr: (s) => {
        if (!/^error:/i.test(s)) streams.stderr.write(s);
      },
      outputError: () => {},
    })
    .exitOverride()
    .addHelpText('after', EXIT_CODES_HELP)
    // The command as commander parsed it (app.ts guessed it from argv before parsing).
    .hook('preAction', (_program, action) => {
      const parent = action.parent;
      ctx.command = parent && parent !== program ? `${parent.name()} ${action.name()}` : action.name();
      ctx.doing = ctx.command;
    });
  // Only the command asked for is declared (commander spends most of a short command's set-up
  // registering options); help, a mistyped command and `help` still see every command.
  const only = argv === undefined ? undefined : requestedCommand(argv);
  for (const [name, declare] of DECLARATIONS) if (only === undefined || only === name) declare(program, ctx);
  return program;
}

function declareEncrypt(program: Command, ctx: Ctx): void {
  const encrypt = program
    .command('encrypt')
    .summary('encrypt a plain disk image into an encrypted VMDK')
    .description(
      'Encrypt IN (a VMDK of any supported subformat, or a raw image) into the encrypted VMDK OUT with a new per-disk key (DEK), locked by a key-encryption key of the local keystore or a KMIP server, and optionally by a recovery passphrase. IN is never modified; OUT appears only when complete.\n\n' +
        'With --in-place, IN itself is encrypted (journaled: an interruption is finished by `vmseal resume IN`).',
    )
    .argument('<IN>', 'plain disk image')
    .argument('[OUT]', 'encrypted VMDK to write (omit with --in-place)')
    .addOption(subformatOption("output subformat (default: the input's; raw → monolithicFlat, streamOptimized → monolithicSparse)", ENCRYPTED_SUBFORMATS))
    .option('--recovery-passphrase', 'also lock the disk with a recovery passphrase (from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)')
    .option('--in-place', 'encrypt IN in place instead of writing OUT (for images too big to copy)')
    .addOption(formatOption('what IN'))
    .option(
      '--trust-v1-journal',
      "resume from a version-1 journal (checksummed, not authenticated) although the disk's descriptor differs from it; only for a journal you know vmseal left",
    );
  addEncryptionParams(encrypt);
  addKeyOptions(encrypt, true);
  addJobOptions(encrypt);
  encrypt.addHelpText(
    'after',
    `
Examples:
  vmseal encrypt disk.vmdk disk-enc.vmdk
  vmseal encrypt disk.img disk-enc.vmdk --subformat monolithicSparse --recovery-passphrase --passphrase-file pw.txt
  vmseal encrypt disk.vmdk disk-enc.vmdk --kms kms1:5696,kms2:5696 --kms-ca ca.pem --kms-cert me.pem --kms-key me.key
  vmseal encrypt big.vmdk --in-place`,
  );
  encrypt.action((input: string, output: string | undefined, opts) => commands.encrypt().then((m) => m.encryptCommand(ctx, input, output, opts)));
}

function declareDecrypt(program: Command, ctx: Ctx): void {
  const decrypt = program
    .command('decrypt')
    .summary('decrypt an encrypted VMDK into a plain VMDK or raw image')
    .description(
      'Decrypt the encrypted VMDK IN into the plain image OUT. The key comes from the provider named in the disk (the local keystore, or KMIP with --kms …) or from its recovery passphrase (--passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE, or --recovery-passphrase to be prompted).',
    )
    .argument('<IN>', 'encrypted VMDK')
    .argument('<OUT>', 'plain image to write')
    .addOption(subformatOption("output subformat (default: the input's)"))
    .option('--raw', 'write a raw image (same as --subformat raw); its name must not end in .vmdk')
    .addOption(formatOption('what IN'))
    .option('--recovery-passphrase', 'unlock with the recovery passphrase (prompted for on a terminal if no file or variable gives it)')
    .addOption(new Option('--mode <octal>', 'permissions of the output files (default: 0600, since they hold the plaintext)').argParser((v) => parseMode(v)));
  addKeyOptions(decrypt, false);
  addJobOptions(decrypt);
  decrypt.addHelpText(
    'after',
    `
Examples:
  vmseal decrypt disk-enc.vmdk disk.vmdk
  vmseal decrypt disk-enc.vmdk disk.img --raw
  vmseal decrypt disk-enc.vmdk disk.vmdk --mode 0640                  (group may read the plain output)
  VMSEAL_PASSPHRASE=… vmseal decrypt disk-enc.vmdk disk.img --raw     (KMS gone: use the recovery passphrase)`,
  );
  decrypt.action((input: string, output: string, opts) => commands.decrypt().then((m) => m.decryptCommand(ctx, input, output, opts)));
}

function declareConvert(program: Command, ctx: Ctx): void {
  const convert = program
    .command('convert')
    .summary('convert images between subformats, optionally encrypting or decrypting; also in batches')
    .description(
      'Convert IN to OUT in another subformat. An encrypted input stays encrypted with the same key unless --decrypt; --encrypt encrypts the output with a new key.\n\n' +
        'Batch: IN may be a directory (its .vmdk, .img and .raw images), or --list FILE names the images (one path per line, # comments); OUT is then a directory. --jobs images are converted at once, taken in order; a failure is reported and the next image runs; the summary lists every image (ok or failed and why, bytes, time) and the exit code is 1 if any failed.',
    )
    .argument('[IN]', 'image, or directory of images (omit with --list)')
    .argument('[OUT]', 'output image, or output directory for a batch')
    .addOption(subformatOption("output subformat (required for a batch; default for one image: the input's)"))
    .option('--list <file>', 'convert the images listed in FILE into the directory OUT')
    .addOption(formatOption('what IN (every input of a batch)'))
    .option('--encrypt', 'encrypt the output with a new key (key options as for `encrypt`)')
    .option('--decrypt', 'write plain output from an encrypted input')
    .option('--recovery-passphrase', 'with --encrypt: also lock with a recovery passphrase; otherwise: unlock with it')
    .option('--skip-existing', 'keep outputs that already exist and convert only the others (to re-run a batch)')
    .addOption(
      new Option('--jobs <n>', `images of a batch converted at once, 1 to ${MAX_JOBS} (default: ${MAX_DEFAULT_JOBS}; 2 on a 1-core machine)`).argParser((v) =>
        parseInteger(v, '--jobs', { min: 1, max: MAX_JOBS }),
      ),
    );
  addEncryptionParams(convert);
  addKeyOptions(convert, true);
  addJobOptions(convert);
  convert.addHelpText(
    'after',
    `
Examples:
  vmseal convert disk.img disk.vmdk --subformat monolithicSparse
  vmseal convert disk.vmdk disk-enc.vmdk --subformat monolithicFlat --encrypt
  vmseal convert images/ out/ --subformat monolithicSparse --encrypt --passphrase-file pw.txt --recovery-passphrase
  vmseal convert --list todo.txt out/ --subformat raw --decrypt`,
  );
  convert.action((a: string | undefined, b: string | undefined, opts) => commands.convert().then((m) => m.convertCommand(ctx, a, b, opts)));
}

function declareRekey(program: Command, ctx: Ctx): void {
  const rekey = program
    .command('rekey')
    .summary('change the key-encryption key (--shallow) or the disk key itself (--deep)')
    .description(
      "--shallow: re-lock the disk's key (DEK) with a new key-encryption key, or add/remove the recovery passphrase; only the descriptor changes, atomically. Without --new-key, --key-provider, --key-id and the passphrase options, a new key is made in the provider the disk uses now.\n\n" +
        '--deep: a new DEK; all data is re-encrypted (a new image renamed over DISK, or --in-place, journaled). Every locker is rotated: a new key-encryption key from each provider the disk uses (or the one --key-provider/--key-id names), and a new recovery passphrase (--new-passphrase-file/--new-passphrase-env) unless --keep-recovery-passphrase. Old key-encryption keys made for this disk alone are then retired (--destroy-old-keys: destroyed); shared ones stay active.',
    )
    .argument('<DISK>', 'encrypted VMDK')
    .option('--shallow', 'new key-encryption key (or passphrase change); data untouched')
    .option('--deep', 'new disk key; all data re-encrypted')
    .option('--new-key', 'lock with a new key-encryption key (shallow)')
    .option(
      '--add-recovery-passphrase',
      'add a recovery passphrase locker (the new passphrase from --passphrase-file/--passphrase-env/VMSEAL_PASSPHRASE or a prompt)',
    )
    .option('--remove-recovery-passphrase', 'remove the recovery passphrase locker(s)')
    .option('--new-passphrase-file <file>', 'deep: file holding the NEW recovery passphrase (the old one, if needed to unlock, stays in --passphrase-file)')
    .option('--new-passphrase-env <name>', 'deep: environment variable holding the NEW recovery passphrase')
    .option(
      '--keep-recovery-passphrase',
      'deep: lock the new disk key with the old recovery passphrase (given with --passphrase-file/--passphrase-env); a leaked passphrase then still opens it',
    )
    .option(
      '--destroy-old-keys',
      'deep: destroy the old key-encryption keys made for this disk instead of retiring them (old backups then need `vmseal keys restore`)',
    )
    .option('--in-place', 'deep rekey in place (journaled, resumable) instead of writing a new image')
    .addOption(formatOption('what DISK'))
    .option(
      '--trust-v1-journal',
      "resume from a version-1 journal (checksummed, not authenticated) although the disk's descriptor differs from it; only for a journal you know vmseal left",
    )
    .addOption(new Option('--cipher <cipher>', `deep: new data cipher: ${CIPHERS.join(' or ')} (default: unchanged)`).argParser(parseCipher))
    .addOption(new Option('--unit-size <bytes>', `deep: new data-unit size, ${UNIT_SIZES.join(' or ')} (default: unchanged)`).argParser(parseUnitSize));
  rekey.option(
    '--recovery-passphrase',
    'unlock with the recovery passphrase (and keep it through --deep); prompted for on a terminal if no file or variable gives it',
  );
  addKeyOptions(rekey, true);
  addJobOptions(rekey, false);
  rekey.addHelpText(
    'after',
    `
Examples:
  vmseal rekey disk-enc.vmdk --shallow
  vmseal rekey disk-enc.vmdk --shallow --key-provider kmip --kms kms1:5696 --kms-ca ca.pem --kms-cert me.pem --kms-key me.key
  vmseal rekey disk-enc.vmdk --shallow --add-recovery-passphrase --passphrase-file pw.txt
  vmseal rekey disk-enc.vmdk --deep
  vmseal rekey disk-enc.vmdk --deep --passphrase-file old-pw.txt --new-passphrase-file new-pw.txt`,
  );
  rekey.action((disk: string, opts) => commands.rekey().then((m) => m.rekeyCommand(ctx, disk, opts)));
}

function declareInfo(program: Command, ctx: Ctx): void {
  const info = program
    .command('info')
    .summary('show what a disk image is (like qemu-img info) and whether it can be unlocked now')
    .argument('<DISK>', 'disk image')
    .addOption(formatOption('what DISK'))
    .option('--recovery-passphrase', 'check whether the recovery passphrase unlocks the disk');
  addKeyOptions(info, false);
  info.action((disk: string, opts) => commands.info().then((m) => m.infoCommand(ctx, disk, opts)));
}

function declareSnapshot(program: Command, ctx: Ctx): void {
  const snapshot = program
    .command('snapshot')
    .summary('take, list, revert and commit snapshots of a VMDK disk (delta disks, as VMware names them)')
    .description(
      'A snapshot makes the disk a read-only layer (mode 0444) and adds an empty child, <base>-00000N.vmdk, that takes the writes; ' +
        'DISK may be any layer of a chain. Encrypted disks need their keys to take, revert or commit a snapshot (every layer shares the DEK).',
    );
  const snapCreate = snapshot
    .command('create')
    .description('add an empty child to DISK and print its path (the new top: write and serve that one)')
    .argument('<DISK>', 'the disk, or the top of its chain')
    .option('--name <name>', 'file name of the child in the same folder (default: <base>-00000N.vmdk)')
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(snapCreate, false);
  snapCreate.action((disk: string, opts) => commands.snapshot().then((m) => m.snapshotCreate(ctx, disk, opts)));
  snapshot
    .command('list')
    .description('list the layers of the chain that ends at DISK, top first (no keys needed)')
    .argument('<DISK>', 'a layer of the chain')
    .action((disk: string) => commands.snapshot().then((m) => m.snapshotList(ctx, disk)));
  const snapRevert = snapshot
    .command('revert')
    .description("discard the changes since the snapshot: replace the top child DISK by a new empty one (VMware's revert)")
    .argument('<DISK>', 'the top of a chain')
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(snapRevert, false);
  snapRevert.action((disk: string, opts) => commands.snapshot().then((m) => m.snapshotRevert(ctx, disk, opts)));
  const snapCommit = snapshot
    .command('commit')
    .description('merge the top child DISK into its parent and remove it: the parent becomes the top (journaled; vmseal resume DISK finishes a killed one)')
    .argument('<DISK>', 'the top of a chain')
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(snapCommit, false);
  snapCommit.action((disk: string, opts) => commands.snapshot().then((m) => m.snapshotCommit(ctx, disk, opts)));
}

function declareVerify(program: Command, ctx: Ctx): void {
  const verify = program
    .command('verify')
    .summary('read a whole disk, check its metadata, and compare with a plain image')
    .description(
      'Read the data of DISK (decrypting it if encrypted; holes are not read), check its metadata and print its content hash (SHA-256 over the non-zero 64 KiB blocks: see docs/cli.md); with --sha256 also the SHA-256 of the whole raw image (time in proportion to the capacity); with --against, compare its content with the plain image PLAIN. Exit code 6 on any mismatch.',
    )
    .argument('<DISK>', 'disk image')
    .option('--against <plain>', 'plain image (VMDK or raw) whose content DISK must equal')
    .option('--sha256', 'also print the SHA-256 of the whole raw image, holes as zeros (reads nothing more, but hashes the whole capacity)')
    .addOption(formatOption('what DISK'))
    .addOption(formatOption('what PLAIN', '--against-format'))
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(verify, false);
  verify.action((disk: string, opts) => commands.verify().then((m) => m.verifyCommand(ctx, disk, opts)));
}

function declareResume(program: Command, ctx: Ctx): void {
  const resume = program
    .command('resume')
    .summary('finish an interrupted --in-place encrypt or deep rekey')
    .argument('<DISK>', 'disk whose in-place job was interrupted')
    .addOption(formatOption('what DISK'))
    .option(
      '--trust-v1-journal',
      "resume from a version-1 journal (checksummed, not authenticated) although the disk's descriptor differs from it; only for a journal you know vmseal left",
    )
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(resume, false);
  resume.action((disk: string, opts) => commands.resume().then((m) => m.resumeCommand(ctx, disk, opts)));
}

function declareRepair(program: Command, ctx: Ctx): void {
  const repair = program
    .command('repair')
    .summary('repair the metadata of an encrypted disk (--reseal-data-check)')
    .description(
      'Recompute the data check of DISK from its data, with its keys, and write it. The way out when a crash tore a write of unit 0 ' +
        '(open then fails with exit code 6, ERR_WRONG_DATA); also gives a format-version-1 disk a data check. It trusts the data: ' +
        'never run it on a descriptor that may have been rolled back or taken from another disk.',
    )
    .argument('<DISK>', 'encrypted disk')
    .option('--reseal-data-check', 'recompute and write the data check (encryption.dataCheck)')
    .option('--recovery-passphrase', 'unlock with the recovery passphrase');
  addKeyOptions(repair, false);
  repair.action((disk: string, opts) => commands.repair().then((m) => m.repairCommand(ctx, disk, opts)));
}

function declareServe(program: Command, ctx: Ctx): void {
  const serveCmd = program
    .command('serve')
    .summary('serve disks (encrypted or plain) over NBD to virtual machines and other clients')
    .description(
      "Serve each DISK as an NBD export until Ctrl-C or SIGTERM: encrypted disks are unlocked with the options of decrypt and served decrypted. By default on a private Unix socket; TCP only with --listen. A writable export holds the disk's exclusive lock, so no vmseal job or qemu process opens it meanwhile. The plaintext goes to whoever can connect: with --tls-cert/--tls-key every client must use TLS (NBD_OPT_STARTTLS), and with --tls-ca present a client certificate signed by that CA. A --listen address that is not loopback requires both, unless --insecure-plaintext / --insecure-no-client-auth.",
    )
    .argument('[DISK...]', 'disks to serve (export name: the file name without .vmdk)')
    .option('--socket <path>', 'Unix socket to listen on (default: $XDG_RUNTIME_DIR/vmseal/nbd.sock)')
    .option('--listen <host:port>', "TCP address to listen on instead (NBD's port is 10809; 0 picks a free port)")
    .option('--name <name>', 'export name of the one DISK')
    .addOption(new Option('--export <name=disk>', 'serve DISK as export NAME (repeatable)').argParser(collectExport))
    .option('--vm <dir>', 'serve the disks of the qemu VM folder DIR (vmseal-vm.json) and its UEFI variables as export <name>-vars')
    .option('--allow-mixed', "serve a VM's disks (--vm, or DISKs that a vmseal-vm.json or .vmx beside them names) although the VM's disks are partly encrypted")
    .option('--read-only', 'serve read-only (shared lock: other readers may open the disks)')
    .addOption(
      new Option('--shared <n>', 'connections per export (default: 1 writable, 16 read-only)').argParser((v) =>
        parseInteger(v, '--shared', { min: 1, max: 1024 }),
      ),
    )
    .option('--no-list', 'refuse NBD_OPT_LIST, and name no other export to a client asking for a wrong one')
    .option('--tls-cert <file>', 'PEM certificate of the server: TLS is then required of every client')
    .option('--tls-key <file>', 'PEM private key of --tls-cert (unencrypted)')
    .option('--tls-ca <file>', 'PEM CA certificate: clients must present a certificate it signed')
    .option('--insecure-plaintext', 'allow --listen on an address that is not loopback, without TLS')
    .option('--insecure-no-client-auth', 'allow --listen on an address that is not loopback, with TLS but without client certificates')
    .addOption(
      new Option('--stall-timeout <ms>', 'disconnect a client whose replies stay unread this long while others wait for memory (default: 30000)').argParser(
        (v) => parseInteger(v, '--stall-timeout', { min: 1, max: 3_600_000 }),
      ),
    )
    .option('--recovery-passphrase', 'unlock with the recovery passphrase')
    .option('--control <path>', `control socket for \`vmseal host\` (default: ${CONTROL_DEFAULT})`);
  addKeyOptions(serveCmd, false);
  serveCmd.addHelpText(
    'after',
    `
Examples:
  vmseal serve disk-enc.vmdk --socket /run/vm1/nbd.sock
  qemu-system-x86_64 ... -drive file=nbd+unix:///disk-enc?socket=/run/vm1/nbd.sock,format=raw,if=virtio
  vmseal serve --export web=web.vmdk --export db=db.vmdk --listen 127.0.0.1:10809
  vmseal serve --vm vm1/ --socket /run/vm1/nbd.sock    # vm1's disks, and vm1-vars for -drive if=pflash,unit=1
  vmseal serve disk-enc.vmdk --listen 0.0.0.0:10809 --tls-cert server-cert.pem --tls-key server-key.pem --tls-ca ca-cert.pem`,
  );
  serveCmd.action((disks: string[], opts) => commands.serve().then((m) => m.serveCommand(ctx, disks, opts)));
}

function declareHost(program: Command, ctx: Ctx): void {
  const host = program
    .command('host')
    .summary('control a running vmseal serve: status, attach, detach, unlock, snapshot, backup')
    .description(
      `Talk to a running \`vmseal serve\` through its control socket (a private Unix socket; default: ${CONTROL_DEFAULT}, with HOME from --home, VMSEAL_HOME or ~/.vmseal). Give the --control or --home that serve was started with.`,
    );
  const controlOption = (): Option => new Option('--control <path>', `control socket of the server (default: ${CONTROL_DEFAULT})`);
  const hostHome = (): Option => new Option('--home <dir>', 'HOME of the default control socket when XDG_RUNTIME_DIR is not set (env: VMSEAL_HOME)');
  host
    .command('status')
    .description('list the exports: name, disk, size, encrypted, locked, clients, bytes read and written')
    .addOption(controlOption())
    .addOption(hostHome())
    .action((opts) => commands.host().then((m) => m.hostStatus(ctx, opts)));
  host
    .command('attach')
    .description("serve one more disk, unlocked with the server's key options (export name: the file name without .vmdk)")
    .argument('<DISK>', 'the disk to serve')
    .option('--name <name>', 'export name')
    .option('--read-only', 'serve read-only (shared lock)')
    .addOption(
      new Option('--shared <n>', 'connections at once (default: 1 writable, 16 read-only)').argParser((v) =>
        parseInteger(v, '--shared', { min: 1, max: 1024 }),
      ),
    )
    .addOption(controlOption())
    .addOption(hostHome())
    .action((disk: string, opts) => commands.host().then((m) => m.hostAttach(ctx, disk, opts)));
  host
    .command('detach')
    .description('stop serving an export: answer its requests in flight, flush, close the disk, release its lock')
    .argument('<NAME>', 'export name')
    .addOption(controlOption())
    .addOption(hostHome())
    .action((name: string, opts) => commands.host().then((m) => m.hostDetach(ctx, name, opts)));
  host
    .command('unlock')
    .description('unlock an export served locked (its key unavailable) with its recovery passphrase, sent over the control socket')
    .argument('<NAME>', 'export name')
    .option('--passphrase-file <file>', 'file holding the recovery passphrase')
    .option('--passphrase-env <name>', 'environment variable holding the recovery passphrase')
    .addOption(controlOption())
    .addOption(hostHome())
    .action((name: string, opts) => commands.host().then((m) => m.hostUnlock(ctx, name, opts)));
  host
    .command('snapshot')
    .description(
      'take a snapshot of a served disk, live: writes wait, the ones in flight finish and are flushed, a child layer is made on the disk (same DEK) and the export switches to it; prints the new top',
    )
    .argument('<NAME>', 'export name')
    .option('--name <name>', 'file name of the new child (default: <base>-00000N.vmdk beside the disk)')
    .addOption(controlOption())
    .addOption(hostHome())
    .action((name: string, opts) => commands.host().then((m) => m.hostSnapshot(ctx, name, opts)));
  host
    .command('commit')
    .description(
      "merge the top layer of a served snapshot chain back into its parent, live: writes wait (reads go on) while the child's data is copied, then the export serves the parent; prints it",
    )
    .argument('<NAME>', 'export name')
    .option('--all', 'merge the whole chain down, top first, one live commit per layer, until the export serves its base')
    .addOption(controlOption())
    .addOption(hostHome())
    .action((name: string, opts) => commands.host().then((m) => m.hostCommit(ctx, name, opts)));
  host
    .command('backup')
    .description(
      'a consistent backup point of a served disk: a live snapshot, a backup of the frozen layer into REPO (no key needed), then a live commit of the snapshot back into the disk; prints the point id',
    )
    .argument('<NAME>', 'export name')
    .argument('<REPO>', 'repository folder (vmseal backup init)')
    .option('--name <name>', 'a name to restore the point by (letters, digits, ., _, -)')
    .option('--history <history>', "the history the point continues (default: the disk's ddb.uuid, else its disk id)")
    .option('--allow-plain', 'back up a plain disk too (its point is marked plain: its chunks are plaintext)')
    .addOption(
      new Option('--wait <seconds>', 'wait this long for the repository lock (held by a prune)').argParser((v) =>
        parseInteger(v, '--wait', { min: 0, max: 86_400 }),
      ),
    )
    .addOption(controlOption())
    .addOption(hostHome())
    .action((name: string, repo: string, opts) => commands.host().then((m) => m.hostBackup(ctx, name, repo, opts)));
}

function declareVm(program: Command, ctx: Ctx): void {
  const vmCommand = program
    .command('vm')
    .summary("a VM folder as one unit: encrypt, decrypt, rekey and inspect its disks, state files and configuration (.vmx, in VMware's construction)")
    .description(
      'A VM is the folder of its .vmx (or the .vmx itself). The .vmx is encrypted as VMware does it (Workstation password-protected VMs, vSphere VM Encryption): encryption.keySafe holds the configuration key under its lockers (a key provider, a passphrase), encryption.data the configuration; .encoding, displayName and encryptedVM.guid stay in the clear. Without --config-only, encrypt and decrypt take the whole VM folder as one journaled job: its disks, then its state files (.nvram, .vmsn, .vmem, .vmss), then the .vmx, all under one key-encryption key per VM; an interrupted job is finished by running the same command again. docs/vm.md specifies the formats.',
    );
  const vmTarget = (cmd: Command): Command => cmd.argument('<VM>', 'the VM folder, or its .vmx file');
  const vmEncrypt = vmTarget(vmCommand.command('encrypt'))
    .description(
      "Encrypt the VM: every plain disk the .vmx (or vmseal-vm.json) names, in place (journaled), each under its own key; the .nvram and snapshot state files in vmseal's container; then the .vmx. Every key is locked by one key-encryption key of the VM (the one its encrypted parts already use, --key-id, or a new one) and by a passphrase with --recovery-passphrase. A VM with some parts encrypted is completed. Killed, it is finished by running the same command again; `vm info` says a job is interrupted meanwhile. A snapshot chain is written aside (every layer under the disk's one key) and moved over itself: room for a copy of it is needed. With --config-only, encrypt the .vmx alone in place (written aside, renamed over it, mode kept): its config key is locked by a new key-encryption key of the local keystore or the KMIP server (as `vmseal encrypt`), and by a passphrase with --recovery-passphrase; --workstation locks it with a passphrase alone, in the construction VMware Workstation opens (PBKDF2-HMAC-SHA-1, 10,000 rounds: weak against guessing, so use a long passphrase).",
    )
    .option('--config-only', 'encrypt the configuration (.vmx) alone, not the disks or state files')
    .option('--recovery-passphrase', 'also lock with a passphrase (from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)')
    .option('--workstation', 'lock with a passphrase alone, as VMware Workstation does (it can then open the VM)');
  addKeyOptions(vmEncrypt, true);
  vmEncrypt.addHelpText(
    'after',
    `
Examples:
  vmseal vm encrypt ~/vmware/win11
  vmseal vm encrypt ~/vmware/win11 --kms kms.example:5696 --kms-ca ca.pem --kms-cert c.pem --kms-key c.key
  vmseal vm encrypt ~/vmware/win11 --config-only
  vmseal vm encrypt win11.vmx --config-only --recovery-passphrase --passphrase-file pw.txt
  vmseal vm encrypt ~/vmware/win11 --config-only --workstation`,
  );
  vmEncrypt.action((target: string, opts) => commands.vm().then((m) => m.vmEncryptCommand(ctx, target, opts)));
  const vmDecrypt = vmTarget(vmCommand.command('decrypt'))
    .description(
      "Decrypt the VM: every disk vmseal encrypted, snapshot chains included (each written aside and renamed over itself: room for one disk's copy is needed), its encrypted state files, then the .vmx; a mixed VM is reversed. Killed, it is finished by running the same command again. With --config-only, decrypt the .vmx alone in place (written aside, renamed over it, mode kept). The config key is opened by the key provider its lockers name, or by the passphrase (asked for when only a passphrase can open it, as for a VMware Workstation VM). Disks VMware encrypted stay encrypted: their key (dataFileKey) is then in the plain .vmx.",
    )
    .option('--config-only', 'decrypt the configuration (.vmx) alone, not the disks')
    .option('--recovery-passphrase', 'unlock with the passphrase (from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)');
  addKeyOptions(vmDecrypt, false);
  vmDecrypt.addHelpText(
    'after',
    `
Examples:
  vmseal vm decrypt ~/vmware/win11
  vmseal vm decrypt ~/vmware/win11 --config-only
  vmseal vm decrypt win11.vmx --config-only --passphrase-file pw.txt`,
  );
  vmDecrypt.action((target: string, opts) => commands.vm().then((m) => m.vmDecryptCommand(ctx, target, opts)));
  const vmInfo = vmTarget(vmCommand.command('info'))
    .description(
      "Say whether the VM's configuration is encrypted and which of its hard disks are (VMware's two lines), then the config key's lockers and each disk named by the .vmx (scsi, ide, sata, nvme) with its state: not encrypted, encrypted by vmseal, or encrypted by VMware (not readable by vmseal). An encrypted .vmx names its disks inside the encryption: they are listed when a key given opens it.",
    )
    .option('--recovery-passphrase', 'open an encrypted .vmx with the passphrase (from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)');
  addKeyOptions(vmInfo, false);
  vmInfo.action((target: string, opts) => commands.vm().then((m) => m.vmInfoCommand(ctx, target, opts)));
  const vmRekey = vmTarget(vmCommand.command('rekey'))
    .description(
      "Put the whole VM under a new VM key-encryption key, as one journaled job (a killed run is continued by running it again): --shallow locks the same keys anew (every disk's KeySafe, snapshot layers included, every encrypted state file's header, the vTPM state key, the .vmx's config key); --deep also makes new keys: each disk re-encrypted under a new disk key, state files under new file keys, the .vmx under a new config key (the vTPM state key is rewrapped, not rotated). The new key comes from --key-provider (or --key-id); the current keys open with the providers the files name, or the recovery passphrase.",
    )
    .option('--shallow', 'a new VM key-encryption key, the same keys (fast)')
    .option('--deep', 'new keys for every disk and file too (disks re-encrypted)')
    .option('--keep-recovery-passphrase', 'deep: lock the new keys with the recovery passphrase too (give it with --passphrase-file …)')
    .option('--remove-recovery-passphrase', 'deep: drop the recovery passphrase lockers')
    .option('--allow-mixed', 'rekey a VM whose disks are partly encrypted (the plain ones are left as they are)')
    .option(
      '--recovery-passphrase',
      'open the current keys with the recovery passphrase (from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)',
    );
  addKeyOptions(vmRekey, true);
  vmRekey.addHelpText(
    'after',
    `
Examples:
  vmseal vm rekey ~/vms/web1 --shallow
  vmseal vm rekey ~/vms/web1 --deep --remove-recovery-passphrase
  vmseal vm rekey ~/vmware/win11 --shallow --key-provider kmip --kms kms1:5696 --kms-ca ca.pem --kms-cert c.pem --kms-key c.key`,
  );
  vmRekey.action((target: string, opts) => commands.vmRekey().then((m) => m.vmRekeyCommand(ctx, target, opts)));
}

function declareBackup(program: Command, ctx: Ctx): void {
  const backup = program
    .command('backup')
    .summary('ciphertext backups of encrypted disks in a repository folder: no key needed')
    .description(
      'Back up encrypted disks as the ciphertext they are, in 1 MiB chunks stored once each under their SHA-256 (deduplicated across points and disks), and restore them. No key is needed and nothing is decrypted; the repository holds no plaintext of an encrypted disk (see docs/backup.md for what it does reveal).',
    );
  const waitOption = (): Option =>
    new Option('--wait <seconds>', 'wait this long for the repository lock (held by a prune, or by backups during a prune)').argParser((v) =>
      parseInteger(v, '--wait', { min: 0, max: 86_400 }),
    );
  backup
    .command('init')
    .description('make a new backup repository in REPO (a new or empty folder)')
    .argument('<REPO>', 'repository folder')
    .action((repo: string) => commands.backup().then((m) => m.backupInit(ctx, repo)));
  backup
    .command('create')
    .description(
      "store a new point of DISK in REPO and print its id: only chunks not already in REPO are written. Needs no key. A plain disk is refused unless --allow-plain (its point then holds plaintext). The point's history is --history, else the disk's ddb.uuid, else its disk id",
    )
    .argument('<DISK>', 'the disk to back up (encrypted VMDK)')
    .argument('<REPO>', 'repository folder')
    .option('--name <name>', 'a name to restore the point by (letters, digits, ., _, -)')
    .option('--history <history>', "the history the point continues (default: the disk's ddb.uuid, else its disk id)")
    .option('--allow-plain', 'back up a plain disk too (its point is marked plain: its chunks are plaintext)')
    .addOption(formatOption('what DISK'))
    .addOption(waitOption())
    .action((disk: string, repo: string, opts) => commands.backupCreate().then((m) => m.backupCreate(ctx, disk, repo, opts)));
  backup
    .command('list')
    .description('list the points of REPO, oldest first')
    .argument('<REPO>', 'repository folder')
    .action((repo: string) => commands.backup().then((m) => m.backupList(ctx, repo)));
  backup
    .command('verify')
    .description('check every manifest of REPO and rehash every chunk (or only those of POINT); exit code 6 on any damage')
    .argument('<REPO>', 'repository folder')
    .argument('[POINT]', 'a point id, name or latest')
    .addOption(waitOption())
    .action((repo: string, point: string | undefined, opts) => commands.backup().then((m) => m.backupVerify(ctx, repo, point, opts)));
  backup
    .command('prune')
    .description(
      'delete the points the rules pick (several rules: every point any of them picks), then every chunk no remaining point names; give at least one rule',
    )
    .argument('<REPO>', 'repository folder')
    .addOption(
      new Option('--keep-last <n>', 'keep the newest N points of each history, delete the others').argParser((v) =>
        parseInteger(v, '--keep-last', { min: 1, max: 1_000_000 }),
      ),
    )
    .option('--before-rekey', "delete the points made under an older disk key than each history's newest encrypted point (after a deep rekey)")
    .option('--plain', 'delete every plain point (points of plain disks hold plaintext)')
    .addOption(waitOption())
    .action((repo: string, opts) => commands.backup().then((m) => m.backupPrune(ctx, repo, opts)));
  const restore = backup
    .command('restore')
    .description(
      "recreate the disk of POINT as OUT: the same ciphertext and descriptor (same key), every chunk's hash checked before it is written; OUT appears only when complete and never replaces a file. --rewrap-to seals the disk key for another key provider (restore at another site; needs the point's key), --new-dek re-encrypts OUT under a new disk key; --over DISK rolls DISK back to the point in place instead, writing only the chunks that differ (no key)",
    )
    .argument('<REPO>', 'repository folder')
    .argument('<POINT>', 'a point id (as `backup create` printed it), a point name, or latest')
    .argument('[OUT]', 'the disk to write (a new file); not with --over')
    .option('--history <history>', 'with latest or a name: only look at the points of this history')
    .option(
      '--over <DISK>',
      'quick rollback: roll DISK (the disk the point was taken of) back to the point in place, writing only the chunks that differ; journaled (`vmseal resume DISK` finishes a killed one); no key needed',
    )
    .addOption(
      new Option(
        '--rewrap-to <kind>',
        "restore at another site: seal the disk key for a new key-encryption key of this provider (local or kmip) instead of the point's lockers; the key is unlocked with the point's provider or recovery passphrase",
      ).argParser(parseKeyProvider),
    )
    .option('--new-dek', 're-encrypt the restored disk under a new disk key (sealed for --rewrap-to, else for new keys of the providers the point names)')
    .addOption(waitOption());
  addKeyOptions(restore, false);
  restore.action((repo: string, point: string, out: string | undefined, opts) => commands.backup().then((m) => m.backupRestore(ctx, repo, point, out, opts)));
  const rewrap = backup
    .command('rewrap')
    .description(
      "remove a locker from every point's KeySafe (after a leaked key-encryption key or passphrase): each manifest is rewritten atomically without it; needs a key that opens the points (another locker's provider, or the recovery passphrase). A point left with no locker is refused before anything changes. The data and disk key stay: after a leak, a deep rekey and prune --before-rekey also remove the old key's points",
    )
    .argument('<REPO>', 'repository folder')
    .requiredOption(
      '--remove-locker <which>',
      "the lockers to remove: 'passphrase', 'provider', or a locker's id (a provider locker's key id, a passphrase locker's id)",
    )
    .addOption(waitOption());
  addKeyOptions(rewrap, false);
  rewrap.action((repo: string, opts) => commands.backup().then((m) => m.backupRewrap(ctx, repo, opts)));
  backup.addHelpText(
    'after',
    `
Examples:
  vmseal backup init /backups/repo
  vmseal backup create disk-enc.vmdk /backups/repo --name nightly
  vmseal backup list /backups/repo
  vmseal backup verify /backups/repo
  vmseal backup prune /backups/repo --keep-last 7
  vmseal backup prune /backups/repo --before-rekey
  vmseal backup rewrap /backups/repo --remove-locker passphrase --kms kms:5696 …
  vmseal backup restore /backups/repo latest restored.vmdk
  vmseal backup restore /backups/repo nightly --over disk-enc.vmdk
  vmseal backup restore /backups/repo nightly site-b.vmdk --rewrap-to kmip --kms kms.site-b:5696 --kms-ca ca.pem --kms-cert c.pem --kms-key k.pem`,
  );
}

function declareKeys(program: Command, ctx: Ctx): void {
  const keys = program
    .command('keys')
    .summary('manage the local keystore (the embedded key provider)')
    .description(
      'The local key provider keeps key-encryption keys in a keystore folder: --home, VMSEAL_HOME, or ~/.vmseal. Back it up: a disk locked only by a local key cannot be opened without it.',
    );
  const homeOption = (): Option => new Option('--home <dir>', 'keystore folder (env: VMSEAL_HOME; default: ~/.vmseal)');
  const homePass = (): Option => new Option('--home-passphrase-file <file>', 'file holding the keystore passphrase');
  keys
    .command('init')
    .description('create a new, empty keystore (protected by a master key file, or a passphrase with --with-passphrase)')
    .addOption(homeOption())
    .addOption(homePass())
    .option(
      '--with-passphrase',
      'protect the keystore with a passphrase (from --home-passphrase-file, VMSEAL_HOME_PASSPHRASE or a prompt) instead of a key file',
    )
    .action((opts) => commands.keys().then((m) => m.keysInit(ctx, opts)));
  keys
    .command('list')
    .description('list the keys of the keystore (ids, names, creation dates; never key material)')
    .addOption(homeOption())
    .addOption(homePass())
    .action((opts) => commands.keys().then((m) => m.keysList(ctx, opts)));
  keys
    .command('create')
    .description('create a new key-encryption key in the keystore')
    .addOption(homeOption())
    .addOption(homePass())
    .option('--name <name>', 'a name for the key')
    .action((opts) => commands.keys().then((m) => m.keysCreate(ctx, opts)));
  keys
    .command('backup')
    .description(
      'write an encrypted backup of the keystore to FILE (backup passphrase from --passphrase-file, --passphrase-env, VMSEAL_PASSPHRASE or a prompt)',
    )
    .argument('<FILE>', 'backup file to write')
    .addOption(homeOption())
    .addOption(homePass())
    .option('--passphrase-file <file>', 'file holding the backup passphrase')
    .option('--passphrase-env <name>', 'environment variable holding the backup passphrase')
    .option('--force', 'replace an existing FILE')
    .action((file: string, opts) => commands.keys().then((m) => m.keysBackup(ctx, file, opts)));
  keys
    .command('restore')
    .description('restore the keys of a backup FILE into the keystore (keys already there are kept)')
    .argument('<FILE>', 'backup file')
    .addOption(homeOption())
    .addOption(homePass())
    .option('--passphrase-file <file>', 'file holding the backup passphrase')
    .option('--passphrase-env <name>', 'environment variable holding the backup passphrase')
    .action((file: string, opts) => commands.keys().then((m) => m.keysRestore(ctx, file, opts)));
}

function declareDemo(program: Command, ctx: Ctx): void {
  program
    .command('demo')
    .summary('run the main job on a sample disk: make, encrypt, inspect, decrypt, verify')
    .description(
      'Make a sample disk with realistic content (partition table, text and binary files, free space), encrypt it with the local key provider, show `info`, decrypt it and check the round trip by hash, with throughput.\n\n' +
        "Keys go to VMSEAL_HOME (or --home) if set, initialised if needed; otherwise to a temporary keystore that is deleted with the demo's files. Everything happens in a temporary folder, removed at the end unless --keep.",
    )
    .addOption(
      new Option('--size <size>', 'virtual size of the sample disk')
        .default(128 * 1024 * 1024, '128M')
        .argParser((v) => parseSize(v, '--size', { min: 16 * 1024 * 1024, max: 64 * 1024 ** 3 })),
    )
    .addOption(subformatOption('encrypted subformat', ['monolithicSparse', 'monolithicFlat']).default('monolithicSparse'))
    .option('--keep <dir>', "keep the demo's files in DIR (created; must be empty)")
    .addOption(new Option('--home <dir>', 'keystore folder to use (default: VMSEAL_HOME if set, else a temporary one)'))
    .action((opts) => commands.demo().then((m) => m.demoCommand(ctx, opts)));
}

function declareVmTpm(program: Command, ctx: Ctx): void {
  // `vmseal vm …`: a VM folder as one unit. The group may already have been declared above (the
  // .vmx commands); `vm tpm` joins it either way.
  const vm =
    program.commands.find((c) => c.name() === 'vm') ?? program.command('vm').summary('a VM folder as one unit: its configuration, disks, state files and vTPM');
  const vmTpm = vm
    .command('tpm')
    .summary("run the vTPM of a qemu VM folder (swtpm, its state encrypted under a key sealed in the VM's manifest)")
    .description(
      'Run swtpm for the qemu VM folder DIR (described by DIR/vmseal-vm.json, whose "tpm": {"state": FOLDER} names the state folder) in the foreground, and print the qemu options that attach it. swtpm encrypts the state itself (aes-256-cbc) under a random state key that vmseal seals in the manifest like a disk\'s key and hands to swtpm through a pipe (never a file or argv). The first start makes the key (under the KEK of the VM\'s encrypted disks, a new one, or --key-id; plus a recovery passphrase with --recovery-passphrase) and the first state (swtpm_setup). Stops swtpm on Ctrl-C or SIGTERM; ends when qemu shuts the vTPM down.',
    )
    .argument('<DIR>', 'qemu VM folder (with vmseal-vm.json)')
    .option('--socket-dir <dir>', 'folder of the sockets (default: a new private folder under $XDG_RUNTIME_DIR or /tmp, removed at the end)')
    .option('--tools', 'also a data socket for tpm2-tools, with the TPM started (not for qemu, which starts it itself)')
    .option('--allow-mixed', "run even when the VM's disks are partly encrypted (refused otherwise: VMware's all-or-none rule)")
    .option('--recovery-passphrase', 'first start: also lock the state key with a recovery passphrase; later: unlock with it');
  addKeyOptions(vmTpm, true);
  vmTpm.addHelpText(
    'after',
    `
Examples:
  vmseal vm tpm vm1/
  qemu-system-x86_64 ... -chardev socket,id=chrtpm,path=SOCKET -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0
  vmseal vm tpm vm1/ --tools      (then TPM2TOOLS_TCTI=swtpm:path=… tpm2_getrandom 8)`,
  );
  vmTpm.action((dir: string, opts) => commands.vmTpm().then((m) => m.vmTpmCommand(ctx, dir, opts)));
}

/** Each top-level command's declaration, in the order `vmseal --help` lists them. */
const DECLARATIONS: readonly (readonly [string, (program: Command, ctx: Ctx) => void])[] = [
  ['encrypt', declareEncrypt],
  ['decrypt', declareDecrypt],
  ['convert', declareConvert],
  ['rekey', declareRekey],
  ['info', declareInfo],
  ['snapshot', declareSnapshot],
  ['verify', declareVerify],
  ['resume', declareResume],
  ['repair', declareRepair],
  ['serve', declareServe],
  ['host', declareHost],
  ['vm', declareVm],
  ['backup', declareBackup],
  ['keys', declareKeys],
  ['demo', declareDemo],
  ['vm', declareVmTpm],
];

/**
 * The top-level command argv runs: its first word, when that names a command (the global options
 * take no value, so the first word that is not an option is the command). Undefined for anything
 * else — no command, `help`, a mistyped name, words after `--` — which then needs the whole tree.
 */
function requestedCommand(argv: readonly string[]): string | undefined {
  for (const arg of argv) {
    if (arg === '--') return undefined;
    if (arg.startsWith('-')) continue;
    return DECLARATIONS.some(([name]) => name === arg) ? arg : undefined;
  }
  return undefined;
}
