// preadNowait(fd, target: Uint8Array, position) -> number: a read that never waits for a device,
// for small reads done on the event loop (src/util/inline-io.ts). Linux preadv2(RWF_NOWAIT, 4.14+)
// copies what the page cache holds and stops where it would have to start I/O or wait for a lock.
//
// Returns the bytes read: target.byteLength when all of it was cached, fewer at the end of the file
// or where the cached part ends, 0 at or past the end of the file. Returns -1 when nothing could be
// read without blocking (EAGAIN) or when the platform or file system does not support RWF_NOWAIT
// (EOPNOTSUPP: tmpfs on Linux 6.x, for one; ENOSYS; EINVAL from a kernel that does not know the
// flag; ESPIPE): the caller then reads through the thread pool as it would have anyway. Other errors
// (EIO, EBADF…) throw an Error with code ERR_NOWAIT_IO, `errno` and `syscall` (napi_errors.h).
//
// Synchronous by design: it runs on the calling thread, which is the point (no thread-pool round
// trip). The target is written in place, so no copy and no ownership question: the call is over
// before JavaScript runs again.
#include "fs_nowait.h"
#include "napi_errors.h"

#include <cerrno>
#include <cstdint>

#if defined(__linux__)
#include <sys/uio.h>
#endif

namespace vmseal {
namespace {

Napi::Value PreadNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw TypeErr(env, "target must be a Uint8Array");
  }
  Napi::Uint8Array target = info[1].As<Napi::Uint8Array>();
  int64_t position = IntegerArg(info, 2, "position", 0, kMaxSafeInteger);
  if (target.ByteLength() == 0) return Napi::Number::New(env, 0);
#if defined(__linux__) && defined(RWF_NOWAIT)
  struct iovec iov;
  iov.iov_base = target.Data();
  iov.iov_len = target.ByteLength();
  ssize_t n;
  do {
    n = ::preadv2(fd, &iov, 1, static_cast<off_t>(position), RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) return Napi::Number::New(env, static_cast<double>(n));
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL || errno == ESPIPE) {
    return Napi::Number::New(env, -1);
  }
  throw SystemError(env, "ERR_NOWAIT_IO", "preadv2", errno);
#else
  (void)fd;
  (void)position;
  return Napi::Number::New(env, -1);
#endif
}

}  // namespace

void InitFileNowait(Napi::Env env, Napi::Object exports) {
  exports.Set("preadNowait", Napi::Function::New(env, PreadNowait, "preadNowait"));
}

}  // namespace vmseal
