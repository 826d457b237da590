// Public surface of the XTS layer (re-exported from the package root).
export { XtsCipher, allocateCipherBuffer, type XtsCipherOptions, type XtsBatchOptions, type XtsAsyncBatchOptions } from './cipher.js';
export { xtsInfo, setXtsThreads, getXtsThreads, type XtsInfo } from './info.js';
export { XtsError, XtsTypeError, XtsRangeError } from './errors.js';
export {
  XTS_KEY_BYTES_128,
  XTS_KEY_BYTES_256,
  XTS_MIN_UNIT_SIZE,
  XTS_MAX_UNIT_SIZE,
  XTS_MAX_THREADS,
  XTS_MAX_UNIT_NUMBER,
  XTS_IMPLEMENTATIONS,
  type XtsImplementation,
} from './constants.js';
