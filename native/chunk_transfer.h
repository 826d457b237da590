// One chunk of a copy job, moved in one go on one thread: read it from the input file, encrypt or
// decrypt it in place (or leave it as it is), write it to the output file. No N-API here: the glue
// (fs_transfer.cc) runs it on libuv's pool, and the C++ harness (native/test) calls it directly.
#pragma once

#include <cstddef>
#include <cstdint>

#include "xts_engine.h"

namespace vmseal {

// What to do to the bytes between the read and the write. kReencrypt: decrypt with `engine`, then
// encrypt with `engine2` (a deep rekey: the old DEK's data units, then the new one's).
enum class TransferCipher { kNone, kEncrypt, kDecrypt, kReencrypt };

struct TransferRequest {
  int fdIn = -1;
  int64_t positionIn = 0;
  uint8_t* buffer = nullptr;  // `length` bytes the caller owns for the whole call (scratch: see below)
  size_t length = 0;
  int fdOut = -1;
  int64_t positionOut = 0;
  TransferCipher cipher = TransferCipher::kNone;
  const XtsEngine* engine = nullptr;  // required unless cipher is kNone
  size_t unitSize = 0;                // data unit; `length` must be a multiple of it
  uint64_t firstUnit = 0;             // unit number (tweak) of the buffer's first byte
  // kReencrypt only: the cipher that encrypts after `engine` decrypted, with its own data units.
  const XtsEngine* engine2 = nullptr;
  size_t unitSize2 = 0;
  uint64_t firstUnit2 = 0;
};

struct TransferResult {
  // Bytes read from the input: `length`, or fewer when the input ended first — then the steps
  // before the one it ended in were written, nothing after (the caller decides what a short
  // source means).
  size_t bytesRead = 0;
  // 0, or the errno of the call that failed (`syscall` names it); EINVAL with syscall "transfer"
  // for a request that breaks the rules above. After a failed write, part of the chunk may be in
  // the output, as after a failed pwrite.
  int error = 0;
  const char* syscall = "";
};

// pread until `length` bytes (or the input's end), transform in place, pwrite until all is
// written — in steps of 256 KiB, each read, transformed and written before the next, all through
// the buffer's first step (it stays in the core's cache) —; EINTR is retried and short counts
// continue. A write that makes no progress is EIO. The fds' file offsets are neither used nor moved.
// The buffer is scratch: afterwards its first bytes hold the last step, the rest is untouched.
TransferResult TransferChunk(const TransferRequest& request);

}  // namespace vmseal
