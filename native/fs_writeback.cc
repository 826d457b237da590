// Write-behind: start the kernel's writeback of a file's dirty pages while the copy goes on, so
// that the fsync a job ends with (before its output is renamed into place) finds little left to
// write. Linux sync_file_range(SYNC_FILE_RANGE_WRITE) queues the writeback of the dirty pages of a
// range and returns without waiting for it to finish; it does not make anything durable (it neither
// flushes the disk's cache nor writes metadata), so it never replaces the fsync: it only moves the
// fsync's work earlier, where it overlaps reading and encrypting.
//
// writebackStart(fd, offset, length) -> Promise<boolean>. length 0 means "to the end of the file".
// The call runs on libuv's thread pool (napi async work), because queueing writeback can block
// while the device's request queue is full: never on the event loop. Resolves true when writeback
// was started, false where it is not supported (not Linux, or a file system or file kind that
// refuses it: EINVAL, ESPIPE, ENOSYS), in which case the final fsync does all the work, as before.
// Other errors (EIO, EBADF…) reject with an Error carrying `code` ERR_WRITEBACK_IO, `errno` and
// `syscall`; the caller's fsync would report an I/O error on the data too.
#include "fs_writeback.h"
#include "napi_errors.h"

#include <cerrno>
#include <cstdint>

#if defined(__linux__)
#include <fcntl.h>
#endif

namespace vmseal {
namespace {

class WritebackWork : public FileWork {
 public:
  WritebackWork(Napi::Env env, int fd, int64_t offset, int64_t length)
      : FileWork(env, "vmseal.writebackStart", "ERR_WRITEBACK_IO", "sync_file_range"), fd_(fd), offset_(offset), length_(length) {}

  void Execute() override {
#if defined(__linux__)
    int rc;
    do {
      rc = ::sync_file_range(fd_, static_cast<off64_t>(offset_), static_cast<off64_t>(length_), SYNC_FILE_RANGE_WRITE);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      started_ = true;
    } else if (!IsUnsupportedErrno(errno, ESPIPE)) {
      Fail(errno);
    }
#endif
  }

 protected:
  Napi::Value Result(Napi::Env env) override { return Napi::Boolean::New(env, started_); }

 private:
  int fd_;
  int64_t offset_;
  int64_t length_;
  bool started_ = false;  // stays false where writeback is not supported
};

Napi::Value WritebackStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int64_t offset = IntegerArg(info, 1, "offset", 0, kMaxSafeInteger);
  int64_t length = IntegerArg(info, 2, "length", 0, kMaxSafeInteger);
  return (new WritebackWork(env, fd, offset, length))->Start();  // deletes itself once settled
}

}  // namespace

void InitFileWriteback(Napi::Env env, Napi::Object exports) {
  exports.Set("writebackStart", Napi::Function::New(env, WritebackStart, "writebackStart"));
}

}  // namespace vmseal
