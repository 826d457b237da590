// The argument and system errors of the small native calls beside the XTS glue (fs_copy.cc,
// fs_extents.cc, fs_lock.cc, fs_nowait.cc, fs_writeback.cc): one definition of their shapes, so
// that every call reports a bad argument and a failed system call the same way.
//
// - a bad argument type: TypeError, code ERR_INVALID_ARG_TYPE;
// - a value out of range: RangeError, code ERR_OUT_OF_RANGE;
// - a failed system call: Error, the caller's code (ERR_LOCK_IO, ERR_FS_EXTENTS_IO…), `errno` (the
//   positive errno) and `syscall`; the message is "<syscall> failed: <strerror>".
// (addon.cc has its own, richer "Expected … but received …" messages for the XTS API.)
//
// The calls that run on libuv's thread pool (fs_copy.cc, fs_writeback.cc, backup_chunks.cc) also
// share here the shape of their work (FileWork: a promise, the errno of the system call that failed
// — and for backup_chunks.cc which call and which file —, the rejection) and
// the rule of which errnos mean "this platform or file cannot do that" (IsUnsupportedErrno).
#pragma once

#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

namespace vmseal {

// Number.MAX_SAFE_INTEGER: the largest offset or length a JS number carries exactly.
constexpr int64_t kMaxSafeInteger = 9007199254740991LL;

inline Napi::Error TypeErr(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG_TYPE"));
  return e;
}

inline Napi::Error RangeErr(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::RangeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_OUT_OF_RANGE"));
  return e;
}

inline Napi::Error SystemError(Napi::Env env, const char* code, const char* syscall, int err) {
  std::string msg = std::string(syscall) + " failed: " + std::strerror(err);
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// Argument i: a JS number that is an integer in [min, max] (max at most kMaxSafeInteger).
inline int64_t IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) throw TypeErr(env, std::string(name) + " must be a number");
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || std::floor(v) != v) throw TypeErr(env, std::string(name) + " must be an integer");
  if (v < static_cast<double>(min) || v > static_cast<double>(max)) throw RangeErr(env, std::string(name) + " is out of range");
  return static_cast<int64_t>(v);
}

// Argument i as a file descriptor (a non-negative int).
inline int FdArg(const Napi::CallbackInfo& info, size_t i) { return static_cast<int>(IntegerArg(info, i, "fd", 0, 0x7fffffff)); }

// An errno by which the kernel says it cannot do the call for these files at all (not implemented,
// a file kind or file system that refuses it), as opposed to an I/O error: the caller then falls
// back to the plain way. `extra` is one more errno that means the same for this one call (EXDEV for
// copy_file_range, ESPIPE for sync_file_range), or 0.
inline bool IsUnsupportedErrno(int err, int extra) {
  return err == ENOSYS || err == EOPNOTSUPP || err == EINVAL || (extra != 0 && err == extra);
}

// A call that runs one system call (or a loop of them) on libuv's pool and settles a promise:
// Execute() (the subclass's, on the pool thread) either records a failed call with Fail(errno) or
// leaves a result that Result() turns into a JS value on the main thread. A failure rejects with
// SystemError(code, syscall, errno), plus `path` when the failure named one. Nothing but the
// subclass's own data crosses into the pool thread. Start() queues the work, which deletes itself
// once settled, and returns the promise.
class FileWork : public Napi::AsyncWorker {
 public:
  Napi::Promise Start() {
    Napi::Promise promise = deferred_.Promise();
    Queue();
    return promise;
  }

 protected:
  // `code` and `syscall` are string literals (they outlive the work).
  FileWork(Napi::Env env, const char* resource, const char* code, const char* syscall)
      : Napi::AsyncWorker(env, resource), deferred_(Napi::Promise::Deferred::New(env)), code_(code), syscall_(syscall) {}

  void Fail(int err) { errno_ = err; }
  // A failure of another system call than the default one, about `path` (set as the error's
  // `path`): for the jobs that run several calls on several files (backup_chunks.cc). Returns false
  // for `return Fail(…)` in a step that reports success as true. `syscall` is a string literal.
  bool Fail(int err, const char* syscall, std::string path) {
    errno_ = err;
    syscall_ = syscall;
    path_ = std::move(path);
    hasPath_ = true;
    return false;
  }
  virtual Napi::Value Result(Napi::Env env) = 0;

  void OnOK() override {
    Napi::Env env = Env();
    if (errno_ != 0) {
      Napi::Error e = SystemError(env, code_, syscall_, errno_);
      if (hasPath_) e.Set("path", Napi::String::New(env, path_));
      deferred_.Reject(e.Value());
      return;
    }
    deferred_.Resolve(Result(env));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  const char* code_;
  const char* syscall_;
  int errno_ = 0;
  std::string path_;
  bool hasPath_ = false;
};

}  // namespace vmseal
