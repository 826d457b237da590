import { describe, it, expect } from 'vitest';
import { VmsealError, describeValue } from '../src/errors.js';
import { XtsCipher } from '../src/xts/index.js';
import { VmdkFormatError } from '../src/vmdk/index.js';

describe('VmsealError', () => {
  it('carries a code and the subclass name', () => {
    const e = new VmsealError('ERR_X', 'bad x');
    expect(e.code).toBe('ERR_X');
    expect(e.name).toBe('VmsealError');
    expect(e).toBeInstanceOf(Error);
  });

  it('recognises the XTS layer argument errors, which must extend TypeError/RangeError', () => {
    let caught: unknown;
    try {
      new XtsCipher(new Uint8Array(7));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(RangeError);
    expect(caught).toBeInstanceOf(VmsealError);
    expect((caught as VmsealError).code).toBe('ERR_XTS_KEY_LENGTH');
  });

  it('keeps subclass checks exact', () => {
    expect(new VmsealError('ERR_X', 'x')).not.toBeInstanceOf(VmdkFormatError);
    expect(new RangeError('plain')).not.toBeInstanceOf(VmsealError);
    expect(null).not.toBeInstanceOf(VmsealError);
  });

  it('describes values without echoing their contents', () => {
    expect(describeValue('secret passphrase')).toBe('a string of length 17');
    expect(describeValue(Buffer.alloc(3))).toBe('Buffer of length 3');
    expect(describeValue(1.5)).toBe('1.5 of type number');
    expect(describeValue(undefined)).toBe('undefined');
  });
});
