// transferChunk(fdIn, positionIn, buffer, fdOut, positionOut, cipher?, unitSize?, firstUnit?,
//               decrypt?, cipher2?, unitSize2?, firstUnit2?) -> Promise<number>
//
// One chunk of a copy job as one job on libuv's pool (chunk_transfer.cc does the work): pread
// `buffer.length` bytes at `positionIn` of `fdIn` into `buffer`, XTS-encrypt them in place with
// `cipher` (data units of `unitSize`, the first one numbered `firstUnit`; `decrypt` true decrypts
// instead; with `cipher2`, `decrypt` must be true and `cipher2` then encrypts what `cipher` decrypted,
// in its own units of `unitSize2` numbered from `firstUnit2`: a deep rekey's re-encryption), or
// leave them as they are when `cipher` is null or undefined, then pwrite them at
// `positionOut` of `fdOut`. Several calls in flight use both cores with whole jobs; the caller
// keeps their order, progress and cancellation (src/pipeline/chunk-transfer.ts).
//
// `buffer` must be a Uint8Array over memory from allocateBuffer(): the pool thread works on it in
// place, and only native-owned memory cannot be detached or shrunk under it (see addon.cc,
// "Native-owned memory"); the call holds the block and the cipher's key schedule until it settles.
// The caller must not read or write the buffer meanwhile; it is scratch: every 256 KiB step goes
// through its first bytes (chunk_transfer.h), so afterwards it holds no chunk. Resolves:
//  - `buffer.length` when the chunk was read, transformed and written in full;
//  - fewer (0 included) when the input ended first: the 256 KiB steps before the one it ended in
//    were written (chunk_transfer.h), nothing after; the caller reports a truncated input.
// A failed system call rejects with an Error carrying `code` ERR_TRANSFER_IO, `errno` and `syscall`
// ("pread" or "pwrite"; napi_errors.h); after a failed pwrite part of the chunk may be written.
// Bad arguments throw synchronously (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE, the XTS calls' codes
// for cipher, unitSize and firstUnit; ERR_XTS_LENGTH when the length is not a multiple of unitSize).
//
// Bounded: a buffer of at most TRANSFER_MAX_BYTES (64 MiB), so one call holds a pool thread for tens
// of milliseconds and the caller checks for cancellation between chunks.
#include "fs_transfer.h"

#include <cstdint>
#include <memory>
#include <string>

#include "addon_access.h"
#include "chunk_transfer.h"
#include "napi_errors.h"

namespace vmseal {
namespace {

constexpr int64_t kMaxTransferBytes = int64_t{64} << 20;

class TransferWork : public Napi::AsyncWorker {
 public:
  TransferWork(Napi::Env env, TransferRequest request, std::shared_ptr<uint8_t> buffer, std::shared_ptr<const XtsEngine> engine,
               std::shared_ptr<const XtsEngine> engine2)
      : Napi::AsyncWorker(env, "vmseal.transferChunk"),
        deferred_(Napi::Promise::Deferred::New(env)),
        request_(request),
        buffer_(std::move(buffer)),
        engine_(std::move(engine)),
        engine2_(std::move(engine2)) {
    request_.buffer = buffer_.get();
    request_.engine = engine_.get();
    request_.engine2 = engine2_.get();
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override { result_ = TransferChunk(request_); }

  void OnOK() override {
    Napi::Env env = Env();
    // Every byte is written: the memory and the key schedule can go now, not when Node deletes us.
    buffer_.reset();
    engine_.reset();
    engine2_.reset();
    if (result_.error != 0) {
      deferred_.Reject(SystemError(env, "ERR_TRANSFER_IO", result_.syscall, result_.error).Value());
      return;
    }
    deferred_.Resolve(Napi::Number::New(env, static_cast<double>(result_.bytesRead)));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  TransferRequest request_;
  std::shared_ptr<uint8_t> buffer_;
  std::shared_ptr<const XtsEngine> engine_;
  std::shared_ptr<const XtsEngine> engine2_;
  TransferResult result_;
};

// chunk_transfer.cc's UnitsValid with the JS errors: whole data units of `unitSize` in the buffer,
// and unit numbers from `firstUnit` that stay below 2^64. `n` ("" or "2") names the cipher's
// arguments (unitSize, firstUnit or unitSize2, firstUnit2).
void CheckUnits(Napi::Env env, size_t length, size_t unitSize, uint64_t firstUnit,
                const std::string& n) {
  if (length % unitSize != 0) {
    Napi::Error e = Napi::RangeError::New(
        env, "buffer's length (" + std::to_string(length) + ") is not a multiple of unitSize" + n +
                 " (" + std::to_string(unitSize) + ")");
    e.Set("code", Napi::String::New(env, "ERR_XTS_LENGTH"));
    throw e;
  }
  const uint64_t count = length / unitSize;
  if (count > 0 && firstUnit > UINT64_MAX - (count - 1)) {
    throw RangeErr(env, "firstUnit" + n + " + the buffer's units is out of range");
  }
}

Napi::Value TransferChunkCall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TransferRequest q;
  q.fdIn = FdArg(info, 0);
  q.positionIn = IntegerArg(info, 1, "positionIn", 0, kMaxSafeInteger);
  size_t length = 0;
  std::shared_ptr<uint8_t> buffer = NativeOwnedArg(info[2], "buffer", &length);
  if (length > static_cast<uint64_t>(kMaxTransferBytes)) throw RangeErr(env, "buffer is longer than TRANSFER_MAX_BYTES");
  q.length = length;
  q.fdOut = FdArg(info, 3);
  q.positionOut = IntegerArg(info, 4, "positionOut", 0, kMaxSafeInteger);
  const int64_t n = static_cast<int64_t>(length);
  if (n > kMaxSafeInteger - q.positionIn || n > kMaxSafeInteger - q.positionOut) throw RangeErr(env, "position + length is out of range");
  std::shared_ptr<const XtsEngine> engine;
  std::shared_ptr<const XtsEngine> engine2;
  if (info.Length() > 5 && !info[5].IsNull() && !info[5].IsUndefined()) {
    engine = CipherEngineArg(info[5]);
    q.unitSize = UnitSizeArg(info[6]);
    q.firstUnit = UnitNumberArg(info[7]);
    if (info.Length() > 8 && !info[8].IsUndefined() && !info[8].IsBoolean()) throw TypeErr(env, "decrypt must be a boolean");
    const bool decrypt = info.Length() > 8 && info[8].IsBoolean() && info[8].As<Napi::Boolean>().Value();
    q.cipher = decrypt ? TransferCipher::kDecrypt : TransferCipher::kEncrypt;
    CheckUnits(env, length, q.unitSize, q.firstUnit, "");
    if (info.Length() > 9 && !info[9].IsNull() && !info[9].IsUndefined()) {
      // A second cipher re-encrypts what the first one decrypted (a deep rekey).
      if (!decrypt) throw TypeErr(env, "decrypt must be true when cipher2 is given (cipher2 encrypts what cipher decrypted)");
      engine2 = CipherEngineArg(info[9]);
      q.unitSize2 = UnitSizeArg(info[10]);
      q.firstUnit2 = UnitNumberArg(info[11]);
      CheckUnits(env, length, q.unitSize2, q.firstUnit2, "2");
      q.cipher = TransferCipher::kReencrypt;
    }
  }
  auto* work = new TransferWork(env, q, std::move(buffer), std::move(engine), std::move(engine2));  // deletes itself after OnOK/OnError
  Napi::Promise promise = work->Promise();
  work->Queue();
  return promise;
}

}  // namespace

void InitFileTransfer(Napi::Env env, Napi::Object exports) {
  exports.Set("transferChunk", Napi::Function::New(env, TransferChunkCall, "transferChunk"));
  exports.Set("TRANSFER_MAX_BYTES", Napi::Number::New(env, static_cast<double>(kMaxTransferBytes)));
}

}  // namespace vmseal
