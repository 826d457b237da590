import { expected } from '../errors.js';
import { VmError } from './errors.js';

/**
 * A VMware configuration file (.vmx, also .vmsd/.vmxf dictionaries), kept byte for byte.
 *
 * The text is lines ending in LF or CRLF (the last line may have no ending). Each line is one of:
 *
 *   blank      only spaces and tabs
 *   comment    optional spaces/tabs, then '#' and anything
 *   entry      key = "value"  or  key = value   (spaces/tabs around '=' and at either end; an entry
 *              may end in a '#' comment). Keys are matched case-insensitively, as VMware does; the
 *              last of several lines with one key is the one that counts.
 *
 * Inside a value VMware writes a byte it cannot leave as it is as '|' and two hex digits (`|22` is
 * '"', `|7C` is '|'); the value's bytes are then text in the file's `.encoding` (default UTF-8).
 *
 * vmseal keeps each line's exact bytes and line ending, so that parse → toBuffer gives back the
 * input byte for byte, whatever the spacing, letter case, duplicates or comments. The text is held
 * as a latin1 string (one character per byte) so that no decoding can change a byte.
 */
export const VMX_LIMITS = Object.freeze({
  /** Bytes of a .vmx (Workstation's are a few KiB; the encrypted form of a 4 MiB text is 5.4 MiB). */
  maxBytes: 8 * 1024 * 1024,
  /** Lines of a .vmx. */
  maxLines: 200_000,
});

export type VmxLineEnding = '' | '\n' | '\r\n';

export interface VmxLine {
  /** 1-based line number in the file. */
  readonly number: number;
  /** The line's bytes without its ending, as latin1. */
  readonly raw: string;
  readonly ending: VmxLineEnding;
  readonly kind: 'blank' | 'comment' | 'entry';
  /** For an entry: the key as written. */
  readonly key?: string;
  /** For an entry: the value as written, without quotes, '|xx' escapes not yet decoded (latin1). */
  readonly rawValue?: string;
}

const BLANK = /^[ \t]*$/;
const COMMENT = /^[ \t]*#/;
// key = "value" | key = bare, an optional trailing comment. A key is anything but blanks, '=', '"', '#'.
const ENTRY = /^[ \t]*([^\s="#]+)[ \t]*=[ \t]*(?:"([^"]*)"|([^\s"#](?:[^"#]*[^\s"#])?))?[ \t]*(?:#.*)?$/;

/** Parse one line (without its ending); null when it is none of blank, comment, entry. */
function parseLine(raw: string, number: number, ending: VmxLineEnding): VmxLine | null {
  if (BLANK.test(raw)) return { number, raw, ending, kind: 'blank' };
  if (COMMENT.test(raw)) return { number, raw, ending, kind: 'comment' };
  const m = ENTRY.exec(raw);
  if (!m) return null;
  return { number, raw, ending, kind: 'entry', key: m[1]!, rawValue: m[2] ?? m[3] ?? '' };
}

/** Decode a value's '|xx' escapes to bytes ('|' not followed by two hex digits stays as it is). */
function unescapeValue(rawValue: string): Buffer {
  return Buffer.from(
    rawValue.replace(/\|([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
    'latin1',
  );
}

export class VmxFile {
  private constructor(
    readonly lines: readonly VmxLine[],
    /** Where the text came from, for messages. */
    readonly file: string | undefined,
  ) {}

  /** Parse the bytes of a .vmx; throws ERR_VMX_FORMAT naming the first line that is not blank, comment or entry. */
  static parse(bytes: Uint8Array, file?: string): VmxFile {
    if (!(bytes instanceof Uint8Array)) throw new VmError('ERR_INVALID_ARGUMENT', expected('a Buffer or Uint8Array', 'the .vmx bytes', bytes));
    const where = file ?? 'the .vmx';
    if (bytes.length > VMX_LIMITS.maxBytes) {
      throw new VmError('ERR_VMX_FORMAT', `${where} is ${bytes.length} bytes; a .vmx of at most ${VMX_LIMITS.maxBytes} bytes is accepted`, { file });
    }
    const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
    const lines: VmxLine[] = [];
    let start = 0;
    while (start < text.length) {
      if (lines.length >= VMX_LIMITS.maxLines) {
        throw new VmError('ERR_VMX_FORMAT', `${where} has more than ${VMX_LIMITS.maxLines} lines`, { file });
      }
      const nl = text.indexOf('\n', start);
      const endOfLine = nl < 0 ? text.length : nl;
      const crlf = nl > start && text.charCodeAt(nl - 1) === 0x0d;
      const raw = text.slice(start, crlf ? nl - 1 : endOfLine);
      const ending: VmxLineEnding = nl < 0 ? '' : crlf ? '\r\n' : '\n';
      const line = parseLine(raw, lines.length + 1, ending);
      if (!line) {
        // The content is not echoed: a .vmx line can hold a key (dataFileKey).
        throw new VmError('ERR_VMX_FORMAT', `line ${lines.length + 1} of ${where} is not 'key = "value"', a comment or a blank line`, {
          file,
          line: lines.length + 1,
        });
      }
      lines.push(line);
      start = endOfLine + 1;
    }
    return new VmxFile(lines, file);
  }

  /** Lines made by vmseal (each `raw` a latin1 string without ending). */
  static fromLines(lines: readonly VmxLine[], file?: string): VmxFile {
    return new VmxFile(
      lines.map((l, i) => ({ ...l, number: i + 1 })),
      file,
    );
  }

  /** The exact bytes: every line's raw text and ending. */
  toBuffer(): Buffer {
    return Buffer.from(this.lines.map((l) => l.raw + l.ending).join(''), 'latin1');
  }

  /** The entry lines whose key is `key` (case-insensitive), in file order. */
  entries(key: string): VmxLine[] {
    const k = key.toLowerCase();
    return this.lines.filter((l) => l.kind === 'entry' && l.key!.toLowerCase() === k);
  }

  has(key: string): boolean {
    return this.entries(key).length > 0;
  }

  /** The file's `.encoding` (default UTF-8). */
  get encoding(): string {
    const e = this.entries('.encoding').at(-1);
    return e ? unescapeValue(e.rawValue!).toString('latin1') : 'UTF-8';
  }

  /** A value's raw bytes ('|xx' decoded), of the last line with `key`; undefined when absent. */
  rawBytes(key: string): Buffer | undefined {
    const e = this.entries(key).at(-1);
    return e ? unescapeValue(e.rawValue!) : undefined;
  }

  /** A value as text in the file's encoding; undefined when absent. Throws ERR_VMX_FORMAT when it does not decode. */
  get(key: string): string | undefined {
    const bytes = this.rawBytes(key);
    if (bytes === undefined) return undefined;
    return decodeText(bytes, this.encoding, `the value of ${key}`, this.file);
  }

  /** The line ending most lines use ('\n' when none has one). */
  get newline(): '\n' | '\r\n' {
    let crlf = 0;
    let lf = 0;
    for (const l of this.lines) {
      if (l.ending === '\r\n') crlf++;
      else if (l.ending === '\n') lf++;
    }
    return crlf > lf ? '\r\n' : '\n';
  }
}

/** Decode bytes in a .vmx encoding (a WHATWG label such as UTF-8, windows-1252, Shift_JIS). */
export function decodeText(bytes: Uint8Array, encoding: string, what: string, file?: string): string {
  let decoder: InstanceType<typeof TextDecoder>;
  try {
    decoder = new TextDecoder(encoding, { fatal: true });
  } catch {
    throw new VmError('ERR_VMX_FORMAT', `${file ?? 'the .vmx'} declares the unknown .encoding ${JSON.stringify(encoding.slice(0, 40))}`, { file });
  }
  try {
    return decoder.decode(bytes);
  } catch {
    throw new VmError('ERR_VMX_FORMAT', `${what} in ${file ?? 'the .vmx'} is not valid ${encoding}`, { file });
  }
}

/** An entry line `key = "value"` as vmseal writes it (value already escaped, latin1). */
export function entryLine(key: string, escapedValue: string, ending: VmxLineEnding): VmxLine {
  return { number: 0, raw: `${key} = "${escapedValue}"`, ending, kind: 'entry', key, rawValue: escapedValue };
}
