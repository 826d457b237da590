/**
 * NBD wire constants (the NBD project's doc/proto.md, "fixed newstyle" negotiation). Every number
 * on the wire is big-endian. Names follow the specification so they can be looked up there.
 */

/** "NBDMAGIC": the first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": the newstyle marker after NBDMAGIC, and the prefix of every client option. */
export const NBD_IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every option reply. */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server → client, 16 bits) and client flags (client → server, 32 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Options a client may send during negotiation. */
export enum Opt {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
}

/** Option reply types; errors have bit 31 set. */
export enum Rep {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
}

/** NBD_INFO_* items of NBD_OPT_INFO / NBD_OPT_GO. */
export enum Info {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

// Transmission flags (16 bits, sent with the export size).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

export enum Cmd {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

// Command flags (16 bits in each request).
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Structured reply chunk types (NBD_REPLY_TYPE_*); errors have bit 15 set. */
export enum ReplyType {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
}
export const NBD_REPLY_FLAG_DONE = 1 << 0;

/** base:allocation extent flags. */
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
export const BASE_ALLOCATION = 'base:allocation';
/** The id this server gives base:allocation (any non-zero 32-bit number the server chooses). */
export const BASE_ALLOCATION_ID = 1;

/** NBD error numbers (the Linux errno values, fixed by the specification whatever the host). */
export enum NbdErrno {
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

/** Sizes of fixed wire structures. */
export const REQUEST_BYTES = 28; // magic 4, flags 2, type 2, cookie 8, offset 8, length 4
export const OPTION_HEADER_BYTES = 16; // IHAVEOPT 8, option 4, length 4
/** The largest option payload accepted (names are ≤ 4096 bytes; meta-context queries a few). */
export const MAX_OPTION_BYTES = 64 * 1024;
/** NBD_OPT_EXPORT_NAME's reply is padded with 124 zero bytes unless the client set NO_ZEROES. */
export const EXPORT_NAME_PADDING = 124;
/** Longest export name or description (the specification's limit for strings). */
export const MAX_STRING_BYTES = 4096;

/** Block sizes advertised with NBD_INFO_BLOCK_SIZE. */
export const PREFERRED_BLOCK = 4096;
export const MAX_PAYLOAD = 32 * 1024 * 1024;
