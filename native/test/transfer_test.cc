// Checks of TransferChunk (native/chunk_transfer.cc), the copy jobs' pread → XTS → pwrite, on real
// files in a temporary folder: plain and encrypted results, steps that cross the internal step
// size, a short input, the errno paths (EBADF on either side, ENOSPC from /dev/full) and requests
// that break the rules (EINVAL). Called from kat_main.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../chunk_transfer.h"
#include "../xts_engine.h"

using vmseal::TransferChunk;
using vmseal::TransferCipher;
using vmseal::TransferRequest;
using vmseal::TransferResult;

extern int g_failures;

namespace {

#define TCHECK(cond, ...)                                \
  do {                                                   \
    if (!(cond)) {                                       \
      ++g_failures;                                      \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                 \
      std::fprintf(stderr, "\n");                        \
    }                                                    \
  } while (0)

std::vector<uint8_t> Pattern(size_t n, unsigned seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

void WriteAll(const std::string& path, const std::vector<uint8_t>& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return;
  std::fwrite(data.data(), 1, data.size(), f);
  std::fclose(f);
}

struct Files {
  std::string dir, in, out;
  Files() {
    char tmpl[] = "/tmp/vmseal-transfer-XXXXXX";
    const char* d = mkdtemp(tmpl);
    dir = d ? d : "/tmp";
    in = dir + "/in";
    out = dir + "/out";
  }
  ~Files() {
    unlink(in.c_str());
    unlink(out.c_str());
    rmdir(dir.c_str());
  }
};

TransferRequest Request(int fdIn, int64_t posIn, std::vector<uint8_t>& buf, int fdOut, int64_t posOut) {
  TransferRequest q;
  q.fdIn = fdIn;
  q.positionIn = posIn;
  q.buffer = buf.data();
  q.length = buf.size();
  q.fdOut = fdOut;
  q.positionOut = posOut;
  return q;
}

}  // namespace

void TestTransfer() {
  Files files;
  // Larger than the internal step (256 KiB) and not a multiple of it: steps carry the unit numbers on.
  const size_t length = (1 << 20) + 3 * 4096;
  const std::vector<uint8_t> source = Pattern(length + 8192, 7);
  WriteAll(files.in, source);
  int in = open(files.in.c_str(), O_RDONLY);
  int out = open(files.out.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  TCHECK(in >= 0 && out >= 0, "open the test files");

  // Plain: the bytes as they are, at the other position.
  {
    std::vector<uint8_t> buf(length);
    TransferResult r = TransferChunk(Request(in, 4096, buf, out, 512));
    TCHECK(r.error == 0 && r.bytesRead == length, "plain transfer: error %d, %zu bytes", r.error, r.bytesRead);
    std::vector<uint8_t> got = ReadAll(files.out);
    TCHECK(got.size() == 512 + length && std::memcmp(got.data() + 512, source.data() + 4096, length) == 0,
           "plain transfer wrote other bytes");
  }

  // The buffer is scratch: every step goes through its first 256 KiB (kept in the core's cache), so
  // the rest of it is never touched — not even faulted in, for a fresh mapping.
  {
    const size_t step = size_t{256} << 10;
    std::vector<uint8_t> buf(length, 0xA5);
    TransferResult r = TransferChunk(Request(in, 0, buf, out, 0));
    TCHECK(r.error == 0 && r.bytesRead == length, "scratch transfer: error %d", r.error);
    bool untouched = true;
    for (size_t i = step; i < length; ++i) untouched = untouched && buf[i] == 0xA5;
    TCHECK(untouched, "the transfer wrote past the buffer's first step");
    std::vector<uint8_t> got = ReadAll(files.out);
    TCHECK(got.size() >= length && std::memcmp(got.data(), source.data(), length) == 0, "scratch transfer wrote other bytes");
  }

  // Encrypt, then decrypt back, for every implementation: the same as the engine on the whole buffer.
  uint8_t key[64];
  for (int i = 0; i < 64; ++i) key[i] = static_cast<uint8_t>(i * 7 + 3);
  for (vmseal::XtsImpl impl : vmseal::AvailableXtsImpls()) {
    auto engine = vmseal::CreateXtsEngine(impl, key, 64);
    const size_t unit = 512;
    const uint64_t first = 1000;
    std::vector<uint8_t> buf(length);
    TransferRequest q = Request(in, 0, buf, out, 0);
    q.cipher = TransferCipher::kEncrypt;
    q.engine = engine.get();
    q.unitSize = unit;
    q.firstUnit = first;
    TransferResult r = TransferChunk(q);
    TCHECK(r.error == 0 && r.bytesRead == length, "%s encrypt transfer: error %d", vmseal::XtsImplName(impl), r.error);
    std::vector<uint8_t> want(length);
    engine->EncryptUnits(source.data(), want.data(), unit, length / unit, first);
    std::vector<uint8_t> got = ReadAll(files.out);
    TCHECK(got.size() >= length && std::memcmp(got.data(), want.data(), length) == 0, "%s encrypted bytes differ",
           vmseal::XtsImplName(impl));
    // Decrypt the output into the input's place at the end of the file: the plaintext again.
    int back = open(files.out.c_str(), O_RDWR);
    std::vector<uint8_t> buf2(length);
    TransferRequest d = Request(back, 0, buf2, back, static_cast<int64_t>(length + 4096));
    d.cipher = TransferCipher::kDecrypt;
    d.engine = engine.get();
    d.unitSize = unit;
    d.firstUnit = first;
    r = TransferChunk(d);
    close(back);
    got = ReadAll(files.out);
    TCHECK(r.error == 0 && got.size() == 2 * length + 4096 && std::memcmp(got.data() + length + 4096, source.data(), length) == 0,
           "%s decrypt transfer: error %d", vmseal::XtsImplName(impl), r.error);
  }

  // Re-encrypt (a deep rekey): decrypted with one key in 512-byte units, encrypted with another in
  // 4 KiB units — the same as the two engines one after the other on the whole buffer.
  {
    uint8_t key2[64];
    for (int i = 0; i < 64; ++i) key2[i] = static_cast<uint8_t>(i * 13 + 1);
    auto oldEngine = vmseal::CreateXtsEngine(vmseal::AvailableXtsImpls().front(), key, 64);
    auto newEngine = vmseal::CreateXtsEngine(vmseal::AvailableXtsImpls().front(), key2, 64);
    std::vector<uint8_t> buf(length);
    TransferRequest q = Request(in, 0, buf, out, 0);
    q.cipher = TransferCipher::kReencrypt;
    q.engine = oldEngine.get();
    q.unitSize = 512;
    q.firstUnit = 8;
    q.engine2 = newEngine.get();
    q.unitSize2 = 4096;
    q.firstUnit2 = 1;
    TransferResult r = TransferChunk(q);
    TCHECK(r.error == 0 && r.bytesRead == length, "re-encrypt transfer: error %d", r.error);
    std::vector<uint8_t> want(source.begin(), source.begin() + static_cast<std::ptrdiff_t>(length));
    oldEngine->DecryptUnits(want.data(), want.data(), 512, length / 512, 8);
    newEngine->EncryptUnits(want.data(), want.data(), 4096, length / 4096, 1);
    std::vector<uint8_t> got = ReadAll(files.out);
    TCHECK(got.size() >= length && std::memcmp(got.data(), want.data(), length) == 0, "re-encrypted bytes differ");
    q.engine2 = nullptr;
    TCHECK(TransferChunk(q).error == EINVAL, "re-encrypt without a second engine");
  }

  // A short input: the bytes that were there, the call does not fail.
  {
    std::vector<uint8_t> buf(16384);
    TransferResult r = TransferChunk(Request(in, static_cast<int64_t>(source.size() - 4096), buf, out, 0));
    TCHECK(r.error == 0 && r.bytesRead == 4096, "short input: error %d, %zu bytes", r.error, r.bytesRead);
  }

  // errno paths.
  {
    std::vector<uint8_t> buf(4096);
    TransferResult r = TransferChunk(Request(out + 1000, 0, buf, out, 0));  // not an open descriptor
    TCHECK(r.error == EBADF && std::strcmp(r.syscall, "pread") == 0, "bad input fd: %d %s", r.error, r.syscall);
    r = TransferChunk(Request(in, 0, buf, in, 0));  // the input is open read-only
    TCHECK(r.error == EBADF && std::strcmp(r.syscall, "pwrite") == 0, "read-only output: %d %s", r.error, r.syscall);
    int full = open("/dev/full", O_WRONLY);
    if (full >= 0) {
      r = TransferChunk(Request(in, 0, buf, full, 0));
      TCHECK(r.error == ENOSPC && std::strcmp(r.syscall, "pwrite") == 0, "/dev/full: %d %s", r.error, r.syscall);
      close(full);
    }
  }

  // Requests that break the rules: EINVAL, nothing read.
  {
    auto engine = vmseal::CreateXtsEngine(vmseal::XtsImpl::kPortable, key, 64);
    std::vector<uint8_t> buf(1000);
    TransferRequest q = Request(in, 0, buf, out, 0);
    q.cipher = TransferCipher::kEncrypt;
    q.engine = engine.get();
    q.unitSize = 512;  // 1000 is not a multiple
    TransferResult r = TransferChunk(q);
    TCHECK(r.error == EINVAL && std::strcmp(r.syscall, "transfer") == 0 && r.bytesRead == 0, "length not whole units");
    q.unitSize = 0;
    TCHECK(TransferChunk(q).error == EINVAL, "unit size 0");
    std::vector<uint8_t> whole(1024);
    q = Request(in, 0, whole, out, 0);
    q.cipher = TransferCipher::kEncrypt;
    q.unitSize = 512;
    TCHECK(TransferChunk(q).error == EINVAL, "no engine");
    q.engine = engine.get();
    q.firstUnit = UINT64_MAX;  // two units would pass 2^64 - 1
    TCHECK(TransferChunk(q).error == EINVAL, "unit numbers past 2^64");
    q = Request(-1, 0, whole, out, 0);
    TCHECK(TransferChunk(q).error == EINVAL, "negative fd");
    q = Request(in, -1, whole, out, 0);
    TCHECK(TransferChunk(q).error == EINVAL, "negative position");
    q = Request(in, 0, whole, out, 0);
    q.buffer = nullptr;
    TCHECK(TransferChunk(q).error == EINVAL, "no buffer");
    q.length = 0;
    TCHECK(TransferChunk(q).error == 0, "an empty request is fine");
  }
  close(in);
  close(out);
}
