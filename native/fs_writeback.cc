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

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <fcntl.h>
#endif

namespace vmseal {
namespace {

Napi::Error ArgError(Napi::Env env, bool range, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  if (range) e = Napi::RangeError::New(env, msg);
  e.Set("code", Napi::String::New(env, range ? "ERR_OUT_OF_RANGE" : "ERR_INVALID_ARG_TYPE"));
  return e;
}

constexpr double kMaxSafe = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

int64_t IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* name, double max) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) throw ArgError(env, false, std::string(name) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::floor(v) != v) throw ArgError(env, false, std::string(name) + " must be an integer");
  if (v < 0 || v > max) throw ArgError(env, true, std::string(name) + " is out of range");
  return static_cast<int64_t>(v);
}

class WritebackWork : public Napi::AsyncWorker {
 public:
  WritebackWork(Napi::Env env, int fd, int64_t offset, int64_t length)
      : Napi::AsyncWorker(env, "vmseal.writebackStart"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), offset_(offset), length_(length) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
#if defined(__linux__)
    int rc;
    do {
      rc = ::sync_file_range(fd_, static_cast<off64_t>(offset_), static_cast<off64_t>(length_), SYNC_FILE_RANGE_WRITE);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      started_ = true;
    } else if (errno == EINVAL || errno == ESPIPE || errno == ENOSYS || errno == EOPNOTSUPP) {
      started_ = false;
    } else {
      errno_ = errno;
    }
#else
    started_ = false;
#endif
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ != 0) {
      std::string msg = std::string("sync_file_range failed: ") + std::strerror(errno_);
      Napi::Error e = Napi::Error::New(env, msg);
      e.Set("code", Napi::String::New(env, "ERR_WRITEBACK_IO"));
      e.Set("errno", Napi::Number::New(env, errno_));
      e.Set("syscall", Napi::String::New(env, "sync_file_range"));
      deferred_.Reject(e.Value());
      return;
    }
    deferred_.Resolve(Napi::Boolean::New(env, started_));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int64_t offset_;
  int64_t length_;
  bool started_ = false;
  int errno_ = 0;
};

Napi::Value WritebackStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(IntegerArg(info, 0, "fd", 2147483647.0));
  int64_t offset = IntegerArg(info, 1, "offset", kMaxSafe);
  int64_t length = IntegerArg(info, 2, "length", kMaxSafe);
  auto* work = new WritebackWork(env, fd, offset, length);  // deletes itself after OnOK/OnError
  Napi::Promise promise = work->Promise();
  work->Queue();
  return promise;
}

}  // namespace

void InitFileWriteback(Napi::Env env, Napi::Object exports) {
  exports.Set("writebackStart", Napi::Function::New(env, WritebackStart, "writebackStart"));
}

}  // namespace vmseal
