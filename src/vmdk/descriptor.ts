import { VmdkFormatError } from './errors.js';
import { describeChoice, expected } from '../errors.js';

/**
 * The VMDK text descriptor.
 *
 * Grammar (one item per line; CRLF or LF; `#` starts a comment line):
 *   header     key=value            e.g. version=1, CID=1a2b3c4d, createType="monolithicSparse"
 *   extent     ACCESS SECTORS TYPE ["file" [OFFSET]]   ACCESS = RW|RDONLY|NOACCESS, TYPE = FLAT|SPARSE|ZERO|VMFS|…
 *   disk db    ddb.key = "value"
 * Values may be quoted; a quoted value cannot contain `"` (the format has no escape).
 *
 * The parsed form keeps every line as written (text and line ending) and regenerates only lines that
 * were edited, so a parse → toString round trip is byte-identical and an edit changes only its line.
 */

/** Descriptors larger than this are refused (ERR_VMDK_LIMIT): 1 MiB, far above any real descriptor. */
export const MAX_DESCRIPTOR_BYTES = 1 << 20;

export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';

export interface ExtentLine {
  readonly access: ExtentAccess;
  /** Size of the extent in 512-byte sectors. */
  readonly sectors: number;
  /** FLAT, SPARSE, ZERO, VMFS, VMFSSPARSE, VMFSRDM, VMFSRAW, SESPARSE (as written, upper case). */
  readonly type: string;
  /** File name as written (relative to the descriptor's folder); undefined for ZERO. */
  readonly file: string | undefined;
  /** Start of the extent's data inside its file, in sectors (FLAT/VMFS); 0 when absent. */
  readonly offset: number;
  /** 1-based line number in the descriptor. */
  readonly line: number;
}

type LineKind = 'kv' | 'extent' | 'comment' | 'blank';

interface Line {
  kind: LineKind;
  text: string;
  eol: string;
  key?: string;
  value?: string;
  /** For kv lines: text before the value (key, spaces, `=`, spaces) and whether the value is quoted. */
  prefix?: string;
  quoted?: boolean;
  trailing?: string;
  extent?: Omit<ExtentLine, 'line'>;
}

export interface DescriptorSetOptions {
  /** Put a NEW header line right after the line of this key (default: after `createType`). Ignored for existing keys and ddb.* keys. */
  after?: string;
}

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
const KV_RE = /^(\s*)([A-Za-z_][A-Za-z0-9_.-]*)(\s*=\s*)(.*?)(\s*)$/;
const EXTENT_RE = /^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)")?(?:\s+(\d+))?\s*$/;
const EXTENT_START_RE = /^\s*(RW|RDONLY|NOACCESS)\s/;
const DDB_COMMENT_RE = /^\s*#\s*DDB\s*$/i;
/** Header keys a VMDK descriptor defines; new (unknown) keys inserted after createType go after any run of non-standard keys. */
const STANDARD_HEADER_KEYS = new Set(['version', 'encoding', 'CID', 'parentCID', 'createType', 'parentFileNameHint', 'isNativeSnapshot']);
const UTF8_NAMES = new Set(['utf-8', 'utf8']);

function checkValue(key: string, value: string): void {
  if (typeof value !== 'string') {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a string', `the value of descriptor key "${key}"`, value));
  }
  if (/["\r\n\0]/.test(value)) {
    throw new VmdkFormatError(
      'ERR_INVALID_ARGUMENT',
      `Expected a value without '"', CR, LF or NUL for descriptor key "${key}" (the descriptor format has no escapes)`,
    );
  }
}

function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string' || !KEY_RE.test(key) || key.length > 256) {
    throw new VmdkFormatError(
      'ERR_INVALID_ARGUMENT',
      `Expected a descriptor key of letters, digits, '_', '.' or '-' (at most 256) for key but received ${describeChoice(key)}`,
    );
  }
}

export class Descriptor {
  #lines: Line[];
  #bom: boolean;
  readonly file: string | undefined;

  private constructor(lines: Line[], bom: boolean, file: string | undefined) {
    this.#lines = lines;
    this.#bom = bom;
    this.file = file;
  }

  /**
   * Parse a descriptor from text or from bytes (bytes must be UTF-8; the text stops at the first NUL,
   * which is where an embedded descriptor's padding starts). Throws VmdkFormatError (ERR_VMDK_FORMAT,
   * ERR_VMDK_ENCODING, ERR_VMDK_LIMIT) naming the line.
   */
  static parse(input: string | Uint8Array, options: { file?: string } = {}): Descriptor {
    const file = options.file;
    let text: string;
    if (typeof input === 'string') {
      const nul = input.indexOf('\0');
      text = nul >= 0 ? input.slice(0, nul) : input;
      if (Buffer.byteLength(text, 'utf8') > MAX_DESCRIPTOR_BYTES) {
        throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor is larger than the limit of ${MAX_DESCRIPTOR_BYTES} bytes`, { file });
      }
    } else if (input instanceof Uint8Array) {
      let end = input.indexOf(0);
      if (end < 0) end = input.length;
      if (end > MAX_DESCRIPTOR_BYTES) {
        throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor is larger than the limit of ${MAX_DESCRIPTOR_BYTES} bytes`, { file });
      }
      const bytes = input.subarray(0, end);
      try {
        text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
      } catch {
        const { line, offset } = findInvalidUtf8(bytes);
        throw new VmdkFormatError('ERR_VMDK_ENCODING', 'descriptor is not valid UTF-8', { file, line, offset });
      }
    } else {
      throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a string or Uint8Array', 'the descriptor', input));
    }
    let bom = false;
    if (text.startsWith('\uFEFF')) {
      bom = true;
      text = text.slice(1);
    }
    const lines: Line[] = [];
    const seen = new Map<string, number>();
    let pos = 0;
    let lineNo = 0;
    while (pos < text.length) {
      lineNo++;
      const nl = text.indexOf('\n', pos);
      let body: string;
      let eol: string;
      if (nl < 0) {
        body = text.slice(pos);
        eol = '';
        pos = text.length;
      } else {
        body = text.slice(pos, nl);
        eol = '\n';
        pos = nl + 1;
        if (body.endsWith('\r')) {
          body = body.slice(0, -1);
          eol = '\r\n';
        }
      }
      lines.push(parseLine(body, eol, lineNo, seen, file));
    }
    const d = new Descriptor(lines, bom, file);
    d.#validate();
    return d;
  }

  #validate(): void {
    const file = this.file;
    const version = this.get('version');
    if (version === undefined) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'descriptor has no "version" line', { file });
    if (!/^[123]$/.test(version)) {
      throw new VmdkFormatError('ERR_VMDK_FORMAT', `descriptor version ${JSON.stringify(version.slice(0, 16))} is not supported (expected 1, 2 or 3)`, {
        file,
        line: this.#lineOf('version'),
      });
    }
    const createType = this.get('createType');
    if (createType === undefined || createType === '') throw new VmdkFormatError('ERR_VMDK_FORMAT', 'descriptor has no "createType" line', { file });
    const encoding = this.get('encoding');
    if (encoding !== undefined && !UTF8_NAMES.has(encoding.toLowerCase())) {
      throw new VmdkFormatError('ERR_VMDK_ENCODING', `descriptor encoding ${JSON.stringify(encoding.slice(0, 32))} is not supported (only UTF-8)`, {
        file,
        line: this.#lineOf('encoding'),
      });
    }
    for (const key of ['CID', 'parentCID']) {
      const v = this.get(key);
      if (v !== undefined && !/^[0-9a-fA-F]{1,8}$/.test(v)) {
        throw new VmdkFormatError('ERR_VMDK_FORMAT', `descriptor ${key} must be up to 8 hex digits`, { file, line: this.#lineOf(key) });
      }
    }
    if (this.extents.length === 0) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'descriptor has no extent lines', { file });
  }

  #lineOf(key: string): number | undefined {
    const i = this.#indexOf(key);
    return i < 0 ? undefined : i + 1;
  }

  /** The value of a header or ddb key (quotes removed), or undefined. */
  get(key: string): string | undefined {
    const i = this.#indexOf(key);
    return i < 0 ? undefined : this.#lines[i]!.value;
  }

  /**
   * The index of `key`'s line, or -1. Indexed loops rather than find/findIndex callbacks here and in
   * set(): a batch makes each new disk's descriptor with a dozen lookups and sets, run in V8's
   * baseline tiers, where a callback per line made set() ≈3 µs.
   */
  #indexOf(key: string): number {
    const lines = this.#lines;
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i]!;
      if (l.kind === 'kv' && l.key === key) return i;
    }
    return -1;
  }

  /** Whether a key is present. */
  has(key: string): boolean {
    return this.get(key) !== undefined;
  }

  /**
   * Set a key. An existing line keeps its place and style (spacing, quoting). A new `ddb.*` key goes after
   * the last ddb line; any other new key goes right after `createType` (or `options.after`), after any
   * non-standard keys already there, so several new keys keep the order they were set in.
   */
  set(key: string, value: string, options: DescriptorSetOptions = {}): this {
    checkKey(key);
    checkValue(key, value);
    const lines = this.#lines;
    const found = this.#indexOf(key);
    if (found >= 0) {
      const existing = lines[found]!;
      existing.value = value;
      existing.text = `${existing.prefix}${existing.quoted ? `"${value}"` : value}${existing.trailing}`;
      return this;
    }
    const eol = this.#defaultEol();
    const line: Line = { kind: 'kv', key, value, prefix: `${key} = `, quoted: true, trailing: '', text: `${key} = "${value}"`, eol };
    let at: number;
    if (key.startsWith('ddb.')) {
      at = -1;
      for (let i = 0; i < lines.length; i++) {
        const l = lines[i]!;
        if (l.kind === 'kv' && l.key!.startsWith('ddb.')) at = i;
      }
      for (let i = 0; at < 0 && i < lines.length; i++) {
        const l = lines[i]!;
        if (l.kind === 'comment' && DDB_COMMENT_RE.test(l.text)) at = i;
      }
      if (at < 0) at = lines.length - 1;
    } else {
      const anchor = options.after ?? 'createType';
      checkKey(anchor);
      at = this.#indexOf(anchor);
      if (at < 0) throw new VmdkFormatError('ERR_INVALID_ARGUMENT', `descriptor has no key "${anchor}" to insert "${key}" after`);
      while (at + 1 < lines.length) {
        const next = lines[at + 1]!;
        if (next.kind !== 'kv' || next.key!.startsWith('ddb.') || STANDARD_HEADER_KEYS.has(next.key!)) break;
        at++;
      }
    }
    const prev = lines[at];
    if (prev && prev.eol === '') {
      prev.eol = eol;
      line.eol = '';
    }
    lines.splice(at + 1, 0, line);
    return this;
  }

  /** Remove a key's line; returns whether it existed. `version` and `createType` cannot be removed. */
  delete(key: string): boolean {
    checkKey(key);
    if (key === 'version' || key === 'createType') {
      throw new VmdkFormatError('ERR_INVALID_ARGUMENT', `descriptor key "${key}" is required and cannot be deleted`);
    }
    const i = this.#indexOf(key);
    if (i < 0) return false;
    const [removed] = this.#lines.splice(i, 1);
    if (removed.eol === '' && i > 0) this.#lines[i - 1].eol = '';
    return true;
  }

  /** Every key/value line (header and ddb) in file order. */
  entries(): Array<[string, string]> {
    return this.#lines.filter((l) => l.kind === 'kv').map((l) => [l.key!, l.value!]);
  }

  /** The extent lines in order. */
  get extents(): readonly ExtentLine[] {
    const out: ExtentLine[] = [];
    const lines = this.#lines;
    for (let i = 0; i < lines.length; i++) {
      const l = lines[i]!;
      if (l.kind === 'extent') out.push({ ...l.extent!, line: i + 1 });
    }
    return out;
  }

  get createType(): string {
    return this.get('createType')!;
  }

  /** The extent lines exactly as written (used to check that an edit left the extents alone). */
  extentText(): string {
    return this.#lines
      .filter((l) => l.kind === 'extent')
      .map((l) => l.text.trim())
      .join('\n');
  }

  /** Whether the descriptor carries lines of vmseal's encryption layer (`encryption.*` or `ddb.encryption.*`). */
  isEncrypted(): boolean {
    return this.#lines.some((l) => l.kind === 'kv' && (l.key!.startsWith('encryption.') || l.key!.startsWith('ddb.encryption.')));
  }

  /** Whether lines end in CRLF (judged by the first line). */
  get crlf(): boolean {
    return this.#defaultEol() === '\r\n';
  }

  #defaultEol(): string {
    for (const l of this.#lines) if (l.eol) return l.eol;
    return '\n';
  }

  clone(): Descriptor {
    return new Descriptor(
      this.#lines.map((l) => ({ ...l })),
      this.#bom,
      this.file,
    );
  }

  /**
   * What `Descriptor.parse(this.toString(), { file })` returns, without printing the text and parsing
   * it again: createDisk opens the sparse disk it has just written with the descriptor it wrote into
   * it (a parse of every line, ≈50 µs, per new disk of a batch). The lines are copies; a descriptor
   * parse would refuse (its size, a required key, the encoding) is refused the same way.
   * @internal
   */
  named(file: string): Descriptor {
    if (Buffer.byteLength(this.toString(), 'utf8') > MAX_DESCRIPTOR_BYTES) {
      throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor is larger than the limit of ${MAX_DESCRIPTOR_BYTES} bytes`, { file });
    }
    const d = new Descriptor(
      this.#lines.map((l) => ({ ...l })),
      this.#bom,
      file,
    );
    d.#validate();
    return d;
  }

  toString(): string {
    let s = this.#bom ? '\uFEFF' : '';
    for (const l of this.#lines) s += l.text + l.eol;
    return s;
  }

  toBuffer(): Buffer {
    return Buffer.from(this.toString(), 'utf8');
  }
}

function parseLine(body: string, eol: string, lineNo: number, seen: Map<string, number>, file: string | undefined): Line {
  const trimmed = body.trim();
  if (trimmed === '') return { kind: 'blank', text: body, eol };
  if (trimmed.startsWith('#')) return { kind: 'comment', text: body, eol };
  if (EXTENT_START_RE.test(body)) {
    const m = EXTENT_RE.exec(body);
    if (!m) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'invalid extent line (expected ACCESS SECTORS TYPE "file" [offset])', { file, line: lineNo });
    const type = m[3].toUpperCase();
    if ((type === 'ZERO') !== (m[4] === undefined)) {
      throw new VmdkFormatError('ERR_VMDK_FORMAT', type === 'ZERO' ? 'a ZERO extent line has no file name' : `a ${type} extent line needs a quoted file name`, {
        file,
        line: lineNo,
      });
    }
    const sectors = Number(m[2]);
    const offset = m[5] === undefined ? 0 : Number(m[5]);
    if (!Number.isSafeInteger(sectors) || sectors > 2 ** 42 || !Number.isSafeInteger(offset) || offset > 2 ** 42) {
      throw new VmdkFormatError('ERR_VMDK_LIMIT', 'extent line has a sector count or offset beyond 2^42 sectors (2 PiB)', { file, line: lineNo });
    }
    return {
      kind: 'extent',
      text: body,
      eol,
      extent: { access: m[1] as ExtentAccess, sectors, type, file: m[4], offset },
    };
  }
  const kv = KV_RE.exec(body);
  if (!kv) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'line is not a comment, a key=value pair or an extent line', { file, line: lineNo });
  const key = kv[2];
  const first = seen.get(key);
  if (first !== undefined) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', `key "${key}" appears twice (first on line ${first})`, { file, line: lineNo });
  }
  seen.set(key, lineNo);
  let raw = kv[4];
  let quoted = false;
  if (raw.startsWith('"')) {
    if (raw.length < 2 || !raw.endsWith('"') || raw.slice(1, -1).includes('"')) {
      throw new VmdkFormatError('ERR_VMDK_FORMAT', `value of "${key}" has unbalanced quotes`, { file, line: lineNo });
    }
    raw = raw.slice(1, -1);
    quoted = true;
  }
  return { kind: 'kv', text: body, eol, key, value: raw, prefix: kv[1] + kv[2] + kv[3], quoted, trailing: kv[5] };
}

/** Locate the first invalid UTF-8 sequence (for the error message). */
function findInvalidUtf8(bytes: Uint8Array): { line: number; offset: number } {
  let line = 1;
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    let n = 0;
    if (b < 0x80) n = 0;
    else if (b >= 0xc2 && b < 0xe0) n = 1;
    else if (b >= 0xe0 && b < 0xf0) n = 2;
    else if (b >= 0xf0 && b < 0xf5) n = 3;
    else return { line, offset: i };
    for (let k = 1; k <= n; k++) {
      if (i + k >= bytes.length || (bytes[i + k] & 0xc0) !== 0x80) return { line, offset: i };
    }
    if (b === 0x0a) line++;
    i += n + 1;
  }
  return { line, offset: i };
}
