import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { TtlvWriter, decodeTtlv, encodeTtlv, messageLengthFromHeader, type TtlvItem } from '../../src/kmip/ttlv.js';
import { KmipError } from '../../src/kmip/errors.js';
import { Tag } from '../../src/kmip/tags.js';
import { fuzzParams } from '../helpers/fuzz.js';

interface Sample {
  id: string;
  version: string;
  direction: 'request' | 'response';
  title: string;
  bytes: number;
  hex: string;
}
const samples: Sample[] = JSON.parse(readFileSync(new URL('../fixtures/kmip/pykmip-samples.json', import.meta.url), 'utf8')).samples;

/** Hex with spaces/newlines allowed, for hand-written expected bytes. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

function ttlvErr(fn: () => unknown): KmipError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KmipError);
    expect((err as KmipError).code).toBe('ERR_KMIP_TTLV');
    return err as KmipError;
  }
  throw new Error('expected an ERR_KMIP_TTLV error');
}

describe('TTLV codec on the captured PyKMIP messages', () => {
  it('has all 15 request/response pairs', () => {
    expect(samples).toHaveLength(30);
  });

  for (const s of samples) {
    it(`decodes and re-encodes byte-exact: ${s.id} ${s.direction} (${s.version})`, () => {
      const bytes = Buffer.from(s.hex, 'hex');
      expect(bytes.length).toBe(s.bytes);
      const item = decodeTtlv(bytes);
      expect(item.tag).toBe(s.direction === 'request' ? Tag.RequestMessage : Tag.ResponseMessage);
      expect(encodeTtlv(item).equals(bytes)).toBe(true);
      expect(messageLengthFromHeader(bytes.subarray(0, 8), item.tag, 1 << 20)).toBe(bytes.length);
    });
  }
});

describe('TtlvWriter against hand-built bytes', () => {
  it('encodes every primitive type with its padding', () => {
    const w = new TtlvWriter(8); // tiny initial buffer: exercises growth
    w.begin(0x420001);
    w.integer(0x420002, -2);
    w.longInteger(0x420003, -2n);
    w.bigInteger(0x420004, 255n);
    w.enumeration(0x420005, 0xffffffff);
    w.boolean(0x420006, true);
    w.textString(0x420007, 'abc');
    w.byteString(0x420008, Buffer.from('0102030405060708', 'hex'));
    w.dateTime(0x420009, 0x6b0b09ddn);
    w.interval(0x42000a, 10);
    w.textString(0x42000b, '');
    w.end();
    const expected = hex(`
      420001 01 00000098
        420002 02 00000004 fffffffe 00000000
        420003 03 00000008 ffffffff fffffffe
        420004 04 00000008 00000000 000000ff
        420005 05 00000004 ffffffff 00000000
        420006 06 00000008 00000000 00000001
        420007 07 00000003 61626300 00000000
        420008 08 00000008 01020304 05060708
        420009 09 00000008 00000000 6b0b09dd
        42000a 0a 00000004 0000000a 00000000
        42000b 07 00000000
    `);
    const out = w.finish();
    expect(out.toString('hex')).toBe(expected.toString('hex'));
    // and back
    const item = decodeTtlv(out);
    expect(item).toEqual({
      tag: 0x420001,
      type: 'Structure',
      value: [
        { tag: 0x420002, type: 'Integer', value: -2 },
        { tag: 0x420003, type: 'LongInteger', value: -2n },
        { tag: 0x420004, type: 'BigInteger', value: 255n },
        { tag: 0x420005, type: 'Enumeration', value: 0xffffffff },
        { tag: 0x420006, type: 'Boolean', value: true },
        { tag: 0x420007, type: 'TextString', value: 'abc' },
        { tag: 0x420008, type: 'ByteString', value: Buffer.from('0102030405060708', 'hex') },
        { tag: 0x420009, type: 'DateTime', value: 0x6b0b09ddn },
        { tag: 0x42000a, type: 'Interval', value: 10 },
        { tag: 0x42000b, type: 'TextString', value: '' },
      ],
    });
  });

  it('sign-extends Big Integers to a multiple of 8 bytes', () => {
    expect(new TtlvWriter().bigInteger(0x420004, -1n).finish().toString('hex')).toBe('4200040400000008ffffffffffffffff');
    expect(
      new TtlvWriter()
        .bigInteger(0x420004, 1n << 63n)
        .finish()
        .toString('hex'),
    ).toBe('420004040000001000000000000000008000000000000000');
  });

  it('fills nested structure lengths when they close', () => {
    const out = new TtlvWriter().struct(0x420010, (a) => a.struct(0x420011, (b) => b.textString(0x420012, 'x')).integer(0x420013, 1)).finish();
    expect(out.toString('hex')).toBe(
      hex(`420010 01 00000028
             420011 01 00000010
               420012 07 00000001 78000000 00000000
             420013 02 00000004 00000001 00000000`).toString('hex'),
    );
  });

  it('refuses unbalanced structures and out-of-range values', () => {
    expect(() => new TtlvWriter().begin(0x420001).finish()).toThrow(/still open/);
    expect(() => new TtlvWriter().end()).toThrow(/no open structure/);
    expect(() => new TtlvWriter().integer(0x420001, 2 ** 31)).toThrow('Expected a 32-bit signed integer for ActivationDate but received 2147483648');
    expect(() => new TtlvWriter().enumeration(Tag.Operation, -1)).toThrow('Expected a 32-bit unsigned enumeration for Operation but received -1');
    expect(() => new TtlvWriter().integer(0x1000000, 1)).toThrow(/3-byte tag/);
  });
});

describe('bounded TTLV decoder: one failing input per guard', () => {
  const int = '420002 02 00000004 00000001 00000000';

  it('rejects input shorter than one header', () => {
    expect(ttlvErr(() => decodeTtlv(hex('42000201'))).message).toBe('Invalid TTLV at offset 0: expected at least 8 bytes but received 4');
  });
  it('rejects a value longer than what remains', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420007 07 00000010 61626300 00000000'))).message).toMatch(/declares 16 value bytes but only 8 remain/);
  });
  it('rejects a child longer than what remains of its structure', () => {
    const e = ttlvErr(() => decodeTtlv(hex(`420001 01 00000010 420007 07 00000010 61626300 00000000 00000000 00000000`)));
    expect(e.message).toMatch(/offset 8: .*declares 16 value bytes but only 8 remain/);
  });
  it('rejects a truncated child header inside a structure', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420001 01 00000008 42000202 0000'))).message).toMatch(/declares 8 value bytes but only 6 remain/);
  });
  it('rejects a fixed-size type with the wrong length', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420002 02 00000008 00000001 00000000'))).message).toMatch(/Integer .* must have length 4 but declares 8/);
    expect(ttlvErr(() => decodeTtlv(hex('420006 06 00000004 00000001 00000000'))).message).toMatch(/Boolean .* must have length 8 but declares 4/);
  });
  it('rejects non-zero padding', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420002 02 00000004 00000001 00000001'))).message).toMatch(/offset 15: non-zero padding/);
    expect(ttlvErr(() => decodeTtlv(hex('420007 07 00000001 61ff0000 00000000'))).message).toMatch(/offset 9: non-zero padding/);
  });
  it('rejects an unknown item type', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420002 0c 00000004 00000001 00000000'))).message).toMatch(/unknown item type 0x0c/);
  });
  it('rejects a Boolean other than 0 or 1', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420006 06 00000008 00000000 00000002'))).message).toMatch(/Boolean .* must be 0 or 1/);
  });
  it('rejects invalid UTF-8 in a Text String', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420007 07 00000002 c3280000 00000000'))).message).toMatch(/not valid UTF-8/);
  });
  it('rejects bytes after the top-level item', () => {
    expect(ttlvErr(() => decodeTtlv(hex(int + ' 00000000 00000000'))).message).toBe('Invalid TTLV at offset 16: 8 bytes follow the top-level item');
  });
  it('rejects Big Integer and Structure lengths that are not multiples of 8', () => {
    expect(ttlvErr(() => decodeTtlv(hex('420004 04 00000004 00000001 00000000'))).message).toMatch(/BigInteger .* positive multiple of 8/);
    expect(ttlvErr(() => decodeTtlv(hex('420001 01 00000004 00000000 00000000'))).message).toMatch(/Structure .* multiple of 8/);
  });
  it('refuses a Big Integer longer than 512 bytes (a 256 KiB one from a hostile server) without decoding it', () => {
    const huge = Buffer.alloc(8 + 256 * 1024, 0x5a);
    huge.writeUIntBE(0x420004, 0, 3);
    huge[3] = 0x04;
    huge.writeUInt32BE(256 * 1024, 4);
    expect(ttlvErr(() => decodeTtlv(huge)).message).toMatch(
      /^Invalid TTLV at offset 0: BigInteger .*\(tag 0x420004\) declares 262144 bytes, more than the maximum of 512$/,
    );
    // 520 bytes: one step past the cap
    const over = Buffer.alloc(8 + 520);
    over.writeUIntBE(0x420004, 0, 3);
    over[3] = 0x04;
    over.writeUInt32BE(520, 4);
    expect(ttlvErr(() => decodeTtlv(over)).message).toMatch(/declares 520 bytes, more than the maximum of 512/);
    expect(() => new TtlvWriter().bigInteger(0x420004, 1n << 4096n)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
  it("decodes Big Integers up to the 512-byte cap, two's complement, both signs", () => {
    for (const value of [0n, 1n, -1n, 255n, -256n, (1n << 63n) - 1n, -(1n << 63n), 1n << 63n, (1n << 4095n) - 1n, -(1n << 4095n), -(1n << 4000n) + 12345n]) {
      const bytes = new TtlvWriter().bigInteger(0x420004, value).finish();
      expect(decodeTtlv(bytes)).toEqual({ tag: 0x420004, type: 'BigInteger', value });
    }
    // all-ones of the maximum length is -1; a lone top bit is the most negative value
    const minusOne = Buffer.concat([hex('420004 04 00000200'), Buffer.alloc(512, 0xff)]);
    expect(decodeTtlv(minusOne)).toMatchObject({ value: -1n });
    const mostNegative = Buffer.concat([hex('420004 04 00000200'), Buffer.alloc(512)]);
    mostNegative[8] = 0x80;
    expect(decodeTtlv(mostNegative)).toMatchObject({ value: -(1n << 4095n) });
  });
  it('enforces the maximum message size', () => {
    expect(ttlvErr(() => decodeTtlv(hex(int), { maxMessageSize: 8 })).message).toMatch(/16 bytes exceeds the maximum of 8/);
  });
  it('enforces the nesting depth', () => {
    let item: TtlvItem = { tag: 0x420002, type: 'Integer', value: 1 };
    for (let i = 0; i < 5; i++) item = { tag: 0x420001, type: 'Structure', value: [item] };
    const bytes = encodeTtlv(item);
    expect(decodeTtlv(bytes, { maxDepth: 5 })).toEqual(item);
    expect(ttlvErr(() => decodeTtlv(bytes, { maxDepth: 4 })).message).toMatch(/nested deeper than 4 levels/);
  });
  it('enforces the item count', () => {
    const bytes = encodeTtlv({
      tag: 0x420001,
      type: 'Structure',
      value: Array.from({ length: 5 }, () => ({ tag: 0x420002, type: 'Integer' as const, value: 1 })),
    });
    expect(decodeTtlv(bytes, { maxItems: 6 }).type).toBe('Structure');
    expect(ttlvErr(() => decodeTtlv(bytes, { maxItems: 5 })).message).toMatch(/more than 5 items/);
  });
  it('checks a stream header: tag, type, alignment and size', () => {
    expect(() => messageLengthFromHeader(hex('42007801 00000008'), Tag.ResponseMessage, 1024)).toThrow(/expected message tag ResponseMessage/);
    expect(() => messageLengthFromHeader(hex('42007b02 00000008'), Tag.ResponseMessage, 1024)).toThrow(/expected a Structure/);
    expect(() => messageLengthFromHeader(hex('42007b01 00000009'), Tag.ResponseMessage, 1024)).toThrow(/multiple of 8/);
    expect(() => messageLengthFromHeader(hex('42007b01 7ffffff8'), Tag.ResponseMessage, 1024)).toThrow(/more than the maximum of 1024/);
    expect(messageLengthFromHeader(hex('42007b01 00000010'), Tag.ResponseMessage, 1024)).toBe(24);
  });
});

describe('TTLV fuzzing (fast-check, fixed seed)', () => {
  const isTtlvError = (err: unknown): boolean => err instanceof KmipError && err.code === 'ERR_KMIP_TTLV';

  it('random bytes either decode or fail with ERR_KMIP_TTLV', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), (bytes) => {
        try {
          const item = decodeTtlv(bytes);
          expect(encodeTtlv(item).equals(Buffer.from(bytes))).toBe(true);
        } catch (err) {
          if (!isTtlvError(err)) throw err;
        }
      }),
      fuzzParams(4242, 2000),
    );
  });

  it('mutated captured messages either decode and re-encode exactly or fail with ERR_KMIP_TTLV', () => {
    const corpus = samples.map((s) => Buffer.from(s.hex, 'hex'));
    fc.assert(
      fc.property(
        fc.nat({ max: corpus.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.option(fc.nat(), { nil: undefined }),
        (which, edits, cut) => {
          const bytes = Buffer.from(corpus[which]!);
          for (const [pos, val] of edits) bytes[pos % bytes.length] = val;
          const input = cut === undefined ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
          try {
            const item = decodeTtlv(input, { maxDepth: 8, maxItems: 500 });
            expect(encodeTtlv(item).equals(input)).toBe(true);
          } catch (err) {
            if (!isTtlvError(err)) throw err;
          }
        },
      ),
      fuzzParams(1717, 3000),
    );
  });

  it('random item trees round-trip through the writer and the reader', () => {
    const tag = fc.integer({ min: 0x420000, max: 0x42ffff });
    const leaf: fc.Arbitrary<TtlvItem> = fc.oneof(
      fc.record({ tag, type: fc.constant('Integer' as const), value: fc.integer({ min: -0x80000000, max: 0x7fffffff }) }),
      fc.record({ tag, type: fc.constant('LongInteger' as const), value: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) }),
      fc.record({ tag, type: fc.constant('BigInteger' as const), value: fc.bigInt({ min: -(2n ** 200n), max: 2n ** 200n }) }),
      fc.record({ tag, type: fc.constant('Enumeration' as const), value: fc.integer({ min: 0, max: 0xffffffff }) }),
      fc.record({ tag, type: fc.constant('Boolean' as const), value: fc.boolean() }),
      fc.record({ tag, type: fc.constant('TextString' as const), value: fc.string({ unit: 'grapheme', maxLength: 20 }) }),
      fc.record({ tag, type: fc.constant('ByteString' as const), value: fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)) }),
      fc.record({ tag, type: fc.constant('DateTime' as const), value: fc.bigInt({ min: 0n, max: 2n ** 40n }) }),
      fc.record({ tag, type: fc.constant('Interval' as const), value: fc.integer({ min: 0, max: 0xffffffff }) }),
    );
    const tree = fc.letrec<{ item: TtlvItem }>((t) => ({
      item: fc.oneof(
        { depthSize: 'small', withCrossShrink: true },
        leaf,
        fc.record({ tag, type: fc.constant('Structure' as const), value: fc.array(t('item'), { maxLength: 4 }) }),
      ),
    })).item;
    fc.assert(
      fc.property(tree, (item) => {
        const bytes = encodeTtlv(item);
        expect(bytes.length % 8).toBe(0);
        expect(decodeTtlv(bytes, { maxDepth: 64 })).toEqual(item);
      }),
      fuzzParams(99, 500),
    );
  });
});
