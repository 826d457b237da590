// copyFileRange(fdIn, positionIn, fdOut, positionOut, length) -> Promise<number>: copy `length`
// bytes from one open file to another inside the kernel. Linux copy_file_range(2) moves the bytes
// with one copy (the page cache of the source into the page cache of the output: an in-kernel
// splice on tmpfs and ext4) or none at all (XFS and btrfs share the blocks: a reflink), where a
// read and a write through user space copy them twice. Used by plain copy jobs for the data of flat
// extents (src/pipeline/kernel-copy.ts).
//
// Explicit positions (the fds' file offsets are neither used nor moved), so jobs on several ranges
// of the same pair of files can run at once. The call loops on short counts and EINTR until
// `length` bytes are copied, and resolves:
//  - `length` when all of it was copied;
//  - fewer (0 included) when the source ended first (copy_file_range returned 0), or when the
//    kernel refused the rest as unsupported after some bytes were copied (the next call then
//    resolves -1): a count short of `length` is never an error by itself;
//  - -1 when nothing was copied because the kernel cannot copy between these files: EXDEV (two
//    file systems the kernel will not copy between), ENOSYS (not implemented), EOPNOTSUPP, EINVAL
//    (a file kind or file system that refuses it, overlapping ranges in one file), and every
//    platform that is not Linux. The caller then reads and writes through user space as before.
// Any other error (EIO, ENOSPC, EBADF, EFBIG…) rejects with an Error carrying `code`
// ERR_COPY_RANGE_IO, `errno` and `syscall` (napi_errors.h).
//
// Bounded: `length` is at most COPY_RANGE_MAX_BYTES (64 MiB), so one call holds a libuv pool
// thread for tens of milliseconds at most, and a caller that copies more issues several calls,
// checking for cancellation (SIGINT) between them. The work runs on libuv's pool (napi async work),
// never on the event loop: a copy waits for the devices of both files. Nothing but two integers
// crosses into the pool thread: no JavaScript memory is touched there.
#include "fs_copy.h"
#include "napi_errors.h"

#include <cerrno>
#include <cstdint>

#if defined(__linux__)
#include <unistd.h>
#endif

namespace vmseal {
namespace {

// Largest length of one call: 64 MiB is ~20–60 ms of copying in memory, far below a second.
constexpr int64_t kMaxCopyBytes = int64_t{64} << 20;

class CopyWork : public FileWork {
 public:
  CopyWork(Napi::Env env, int fdIn, int64_t posIn, int fdOut, int64_t posOut, int64_t length)
      : FileWork(env, "vmseal.copyFileRange", "ERR_COPY_RANGE_IO", "copy_file_range"),
        fdIn_(fdIn),
        posIn_(posIn),
        fdOut_(fdOut),
        posOut_(posOut),
        length_(length) {}

  void Execute() override {
#if defined(__linux__)
    off64_t in = static_cast<off64_t>(posIn_);
    off64_t out = static_cast<off64_t>(posOut_);
    while (copied_ < length_) {
      ssize_t n = ::copy_file_range(fdIn_, &in, fdOut_, &out, static_cast<size_t>(length_ - copied_), 0);
      if (n > 0) {
        copied_ += n;  // the kernel advanced `in` and `out` by n
        continue;
      }
      if (n == 0) return;  // the source ended
      if (errno == EINTR) continue;
      if (IsUnsupportedErrno(errno, EXDEV)) {
        if (copied_ == 0) unsupported_ = true;
        return;
      }
      Fail(errno);
      return;
    }
#else
    unsupported_ = true;
#endif
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Number::New(env, unsupported_ ? -1.0 : static_cast<double>(copied_)); }

 private:
  int fdIn_;
  int64_t posIn_;
  int fdOut_;
  int64_t posOut_;
  int64_t length_;
  int64_t copied_ = 0;
  bool unsupported_ = false;
};

Napi::Value CopyFileRange(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fdIn = FdArg(info, 0);
  int64_t posIn = IntegerArg(info, 1, "positionIn", 0, kMaxSafeInteger);
  int fdOut = FdArg(info, 2);
  int64_t posOut = IntegerArg(info, 3, "positionOut", 0, kMaxSafeInteger);
  int64_t length = IntegerArg(info, 4, "length", 0, kMaxCopyBytes);
  if (length > kMaxSafeInteger - posIn || length > kMaxSafeInteger - posOut) throw RangeErr(env, "position + length is out of range");
  return (new CopyWork(env, fdIn, posIn, fdOut, posOut, length))->Start();  // deletes itself once settled
}

}  // namespace

void InitFileCopy(Napi::Env env, Napi::Object exports) {
  exports.Set("copyFileRange", Napi::Function::New(env, CopyFileRange, "copyFileRange"));
  exports.Set("COPY_RANGE_MAX_BYTES", Napi::Number::New(env, static_cast<double>(kMaxCopyBytes)));
}

}  // namespace vmseal
