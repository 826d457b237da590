// The .vmx parser keeps every byte: parse → toBuffer is the identity on every accepted input, and
// values are read the way VMware writes them (case-insensitive keys, last one wins, '|xx' escapes).
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { fuzzParams } from '../helpers/fuzz.js';
import { VmxFile, VMX_LIMITS } from '../../src/vm/vmx-file.js';
import { VmError } from '../../src/vm/index.js';

const SAMPLES: Record<string, string | Buffer> = {
  workstation: '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "18"\ndisplayName = "Windows 11"\nnvme0:0.fileName = "Windows 11.vmdk"\n',
  crlf: '.encoding = "UTF-8"\r\nconfig.version = "8"\r\ndisplayName = "x"\r\n',
  mixedEndings: 'a = "1"\r\nb = "2"\nc = "3"\r\n',
  noFinalNewline: '.encoding = "UTF-8"\ndisplayName = "last"',
  commentsAndBlanks: '#!/usr/bin/vmware\n# a comment\n\n   \t\n  # indented comment\nmemsize = "2048"   # trailing comment\n\n',
  duplicates: 'memsize = "1024"\nMEMSIZE = "2048"\nmemSize = "4096"\n',
  oddSpacing: '  numvcpus="2"\nguestOS   =   "ubuntu-64"\t\nfoo =""\nbar\t=\t"a b  c"\n',
  unquoted: 'tools.syncTime = TRUE\nempty =\n',
  escapes: 'annotation = "say |22hi|22 |7C pipe|0Anewline"\n',
  utf8: 'displayName = "Überprüfung ☃"\n',
  latin1: Buffer.from('.encoding = "windows-1252"\ndisplayName = "caf\xe9"\n', 'latin1'),
  empty: '',
  onlyNewlines: '\n\n\r\n',
};

describe('VmxFile', () => {
  for (const [name, text] of Object.entries(SAMPLES)) {
    it(`round-trips ${name} byte for byte`, () => {
      const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text, 'utf8');
      expect(VmxFile.parse(bytes).toBuffer().equals(bytes)).toBe(true);
    });
  }

  it('reads values: case-insensitive keys, the last line wins, escapes and encodings decoded', () => {
    expect(VmxFile.parse(Buffer.from(SAMPLES.duplicates as string)).get('memsize')).toBe('4096');
    expect(VmxFile.parse(Buffer.from(SAMPLES.escapes as string)).get('annotation')).toBe('say "hi" | pipe\nnewline');
    expect(VmxFile.parse(Buffer.from(SAMPLES.utf8 as string)).get('displayname')).toBe('Überprüfung ☃');
    expect(VmxFile.parse(SAMPLES.latin1 as Buffer).get('displayName')).toBe('café');
    const odd = VmxFile.parse(Buffer.from(SAMPLES.oddSpacing as string));
    expect([odd.get('numvcpus'), odd.get('guestos'), odd.get('foo'), odd.get('bar'), odd.get('missing')]).toEqual(['2', 'ubuntu-64', '', 'a b  c', undefined]);
    const bare = VmxFile.parse(Buffer.from(SAMPLES.unquoted as string));
    expect([bare.get('tools.syncTime'), bare.get('empty')]).toEqual(['TRUE', '']);
    expect(VmxFile.parse(Buffer.from(SAMPLES.crlf as string)).newline).toBe('\r\n');
    expect(VmxFile.parse(Buffer.from(SAMPLES.workstation as string)).newline).toBe('\n');
  });

  it('refuses a line that is not an entry, comment or blank, naming the line but not its content', () => {
    for (const [text, line] of [
      ['a = "1"\nthis is not a line\n', 2],
      ['a = "1"\nb = "unterminated\n', 2],
      ['dataFileKey = "secret" "more"\n', 1],
      ['= "no key"\n', 1],
      ['a = "1"\rb = "2"\n', 1],
    ] as const) {
      const err = (() => {
        try {
          VmxFile.parse(Buffer.from(text));
        } catch (e) {
          return e;
        }
        return undefined;
      })() as VmError;
      expect(err).toBeInstanceOf(VmError);
      expect(err.code).toBe('ERR_VMX_FORMAT');
      expect(err.line).toBe(line);
      expect(err.message).toBe(`line ${line} of the .vmx is not 'key = "value"', a comment or a blank line`);
      expect(err.message).not.toContain('secret');
    }
  });

  it('refuses more than the size limit before reading any line, and a value that does not decode', () => {
    expect(() => VmxFile.parse(Buffer.alloc(VMX_LIMITS.maxBytes + 1, 0x0a))).toThrow(expect.objectContaining({ code: 'ERR_VMX_FORMAT' }));
    const badUtf8 = VmxFile.parse(Buffer.from([...Buffer.from('displayName = "'), 0xff, 0x22, 0x0a]));
    expect(() => badUtf8.get('displayName')).toThrow(
      expect.objectContaining({ code: 'ERR_VMX_FORMAT', message: 'the value of displayName in the .vmx is not valid UTF-8' }),
    );
    const unknownEncoding = VmxFile.parse(Buffer.from('.encoding = "no-such-encoding"\nx = "1"\n'));
    expect(() => unknownEncoding.get('x')).toThrow(expect.objectContaining({ code: 'ERR_VMX_FORMAT' }));
    expect(() => VmxFile.parse('text' as unknown as Buffer)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('VmxFile on generated input', () => {
  const piece = fc.constantFrom('a', 'Z', '0', '.', ':', '_', ' ', '\t', '=', '"', '#', '|', '|22', '\r', '\n', '\r\n', 'é', '\u0000', 'key', ' = ');
  it('any bytes: parsed and written back unchanged, or refused with ERR_VMX_FORMAT and a line number', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc.array(piece, { maxLength: 60 }).map((p) => Buffer.from(p.join(''), 'utf8')),
        ),
        (bytes) => {
          let vmx: VmxFile;
          try {
            vmx = VmxFile.parse(bytes);
          } catch (err) {
            expect(err).toBeInstanceOf(VmError);
            expect((err as VmError).code).toBe('ERR_VMX_FORMAT');
            expect((err as VmError).line).toBeGreaterThan(0);
            return;
          }
          expect(vmx.toBuffer().equals(Buffer.from(bytes))).toBe(true);
        },
      ),
      fuzzParams(0x5a1, 400),
    );
  });

  const key = fc.stringMatching(/^[A-Za-z.][A-Za-z0-9_.:]{0,12}$/);
  const value = fc.stringMatching(/^[^"\r\n]{0,16}$/);
  const blank = fc.stringMatching(/^[ \t]{0,3}$/);
  const line = fc.oneof(
    fc.tuple(blank, key, blank, blank, value).map(([a, k, b, c, v]) => `${a}${k}${b}=${c}"${v}"`),
    fc.tuple(blank, fc.stringMatching(/^[^\r\n]{0,20}$/)).map(([a, t]) => `${a}#${t}`),
    blank,
  );
  it('any file of entries, comments and blanks with LF, CRLF or no final ending parses, and reads back its last values', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(line, fc.constantFrom('\n', '\r\n')), { maxLength: 30 }), fc.boolean(), (lines, dropLast) => {
        let text = lines.map(([l, e]) => l + e).join('');
        if (dropLast && lines.length > 0) text = text.replace(/\r?\n$/, '');
        const vmx = VmxFile.parse(Buffer.from(text, 'utf8'));
        expect(vmx.toBuffer().toString('utf8')).toBe(text);
        for (const l of vmx.lines) if (l.kind === 'entry') expect(vmx.has(l.key!.toUpperCase())).toBe(true);
      }),
      fuzzParams(0x5a2, 300),
    );
  });
});
