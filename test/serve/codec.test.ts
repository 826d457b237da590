// The NBD codec alone: byte layouts built independently here, and every truncation of a payload
// rejected with WireError (never a RangeError or a wrong value).
import { describe, expect, it } from 'vitest';
import {
  WireError,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeOptionReply,
  encodeStructuredError,
} from '../../src/serve/codec.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('encoders', () => {
  it('write the specification layouts', () => {
    expect(encodeGreeting()).toEqual(hex('4e42444d41474943 49484156454f5054 0003'));
    expect(encodeOptionReply(7, 1)).toEqual(hex('0003e889045565a9 00000007 00000001 00000000'));
    expect(encodeInfoExport(0x123456789a, 0x0105)).toEqual(hex('0000 000000123456789a 0105'));
    expect(encodeInfoBlockSize({ minimum: 512, preferred: 4096, maximum: 32 << 20 })).toEqual(hex('0003 00000200 00001000 02000000'));
    expect(encodeExportNameReply(1024, 3, true)).toEqual(hex('0000000000000400 0003'));
    expect(encodeExportNameReply(1024, 3, false).length).toBe(10 + 124);
    const cookie = hex('0102030405060708');
    expect(encodeStructuredError(cookie, 22, 'no')).toEqual(hex('668e33ef 0001 8001 0102030405060708 00000008 00000016 0002 6e6f'));
    expect(encodeBlockStatus(cookie, 1, [{ length: 4096, flags: 3 }])).toEqual(hex('668e33ef 0001 0005 0102030405060708 0000000c 00000001 00001000 00000003'));
  });
});

describe('decoders', () => {
  it('read a request, clamping offsets no export can have', () => {
    const r = decodeRequest(hex('25609513 0001 0001 0102030405060708 0000000000001000 00000200'));
    expect(r).toMatchObject({ flags: 1, type: 1, offset: 4096, length: 512 });
    expect(r.cookie).toEqual(hex('0102030405060708'));
    expect(decodeRequest(hex('25609513 0000 0000 0000000000000000 ffffffffffffffff 00000001')).offset).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => decodeRequest(hex('25609514 0000 0000 0000000000000000 0000000000000000 00000000'))).toThrow(WireError);
  });

  it('reject an option header without IHAVEOPT', () => {
    expect(decodeOptionHeader(hex('49484156454f5054 00000007 00000010'))).toEqual({ option: 7, length: 16 });
    expect(() => decodeOptionHeader(hex('49484156454f5055 00000007 00000010'))).toThrow(WireError);
  });

  it('reject every truncation and any extra byte of INFO/GO and meta-context data', () => {
    const info = hex('00000004 64697363 0002 0001 0003'); // "disc", 2 requests: NAME, BLOCK_SIZE
    expect(decodeInfoRequest(info)).toEqual({ name: 'disc', infos: [1, 3] });
    const meta = hex('00000001 61 00000002 00000001 78 0000000f 626173653a616c6c6f636174696f6e');
    expect(decodeMetaContextRequest(meta)).toEqual({ name: 'a', queries: ['x', 'base:allocation'] });
    for (const [buf, decode] of [
      [info, decodeInfoRequest],
      [meta, decodeMetaContextRequest],
    ] as const) {
      for (let n = 0; n < buf.length; n++) expect(() => decode(buf.subarray(0, n)), `${n} bytes`).toThrow(WireError);
      expect(() => decode(Buffer.concat([buf, Buffer.from([0])]))).toThrow(WireError);
    }
  });

  it('reject names that are too long or not UTF-8', () => {
    const long = Buffer.alloc(4 + 5000 + 2);
    long.writeUInt32BE(5000, 0);
    expect(() => decodeInfoRequest(long)).toThrow(/beyond the limit of 4096/);
    expect(() => decodeInfoRequest(hex('00000002 c328 0000'))).toThrow(/not valid UTF-8/);
  });
});
