// Standalone checks and micro-benchmarks for the AES-XTS kernels (no Node needed).
//
//   kat                 IEEE 1619 vectors + differential tests of every available implementation
//                       against OpenSSL's EVP aes-xts and against each other, and the copy
//                       jobs' chunk transfer (transfer_test.cc)
//   kat --bench [secs]  GB/s per implementation, AES-128/256, 512/4096-byte units, encrypt and
//                       decrypt, next to OpenSSL EVP in the same process
//
// Build: make -C native/test check | bench   (links libcrypto for the reference)
#include <openssl/evp.h>

#include <ctime>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../xts_engine.h"
#include "ieee1619_vectors.h"

using vmseal::XtsEngine;
using vmseal::XtsImpl;

int g_failures = 0;  // also counted by transfer_test.cc
void TestTransfer();

namespace {

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      ++g_failures;                                      \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                 \
      std::fprintf(stderr, "\n");                        \
      if (g_failures > 20) std::exit(1);                 \
    }                                                    \
  } while (0)

void UnitTweak(uint64_t n, uint8_t t[16]) {
  for (int i = 0; i < 8; ++i) t[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memset(t + 8, 0, 8);
}

// OpenSSL reference: one unit with a 16-byte tweak.
void OsslXts(bool enc, const uint8_t* key, size_t keyLen, const uint8_t tweak[16],
             const uint8_t* in,
             uint8_t* out, size_t len) {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  const EVP_CIPHER* c = keyLen == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts();
  int ok = EVP_CipherInit_ex(ctx, c, nullptr, key, tweak, enc ? 1 : 0);
  int outl = 0;
  ok = ok && EVP_CipherUpdate(ctx, out, &outl, in, static_cast<int>(len));
  if (!ok || static_cast<size_t>(outl) != len) {
    std::fprintf(stderr, "OpenSSL XTS failed\n");
    std::exit(2);
  }
  EVP_CIPHER_CTX_free(ctx);
}

std::vector<XtsImpl> Impls() { return vmseal::AvailableXtsImpls(); }

void TestVectors() {
  for (XtsImpl impl : Impls()) {
    for (const Ieee1619Vector& v : kIeee1619Vectors) {
      auto e = vmseal::CreateXtsEngine(impl, v.key, v.keyLen);
      CHECK(e != nullptr, "engine %s", vmseal::XtsImplName(impl));
      if (!e) continue;
      std::vector<uint8_t> buf(v.len);
      e->EncryptWithTweak(v.plaintext, buf.data(), v.len, v.tweak);
      CHECK(std::memcmp(buf.data(), v.ciphertext, v.len) == 0, "%s vector %d encrypt (tweak)",
            vmseal::XtsImplName(impl), v.number);
      e->DecryptWithTweak(v.ciphertext, buf.data(), v.len, v.tweak);
      CHECK(std::memcmp(buf.data(), v.plaintext, v.len) == 0, "%s vector %d decrypt (tweak)",
            vmseal::XtsImplName(impl), v.number);
      if (v.hasDataUnit) {
        uint8_t t[16];
        UnitTweak(v.dataUnit, t);
        CHECK(std::memcmp(t, v.tweak, 16) == 0, "vector %d tweak is not LE(dataUnit)", v.number);
        e->EncryptUnits(v.plaintext, buf.data(), v.len, 1, v.dataUnit);
        CHECK(std::memcmp(buf.data(), v.ciphertext, v.len) == 0, "%s vector %d encrypt (unit)",
              vmseal::XtsImplName(impl), v.number);
        // In place.
        e->DecryptUnits(buf.data(), buf.data(), v.len, 1, v.dataUnit);
        CHECK(std::memcmp(buf.data(), v.plaintext, v.len) == 0, "%s vector %d decrypt (unit)",
              vmseal::XtsImplName(impl), v.number);
      }
    }
  }
}

// Every implementation against OpenSSL on random keys, unit sizes (stealing included), unit
// counts, unit numbers near 2^32 and 2^64, in place and out of place.
void TestRandom(unsigned seed, int iterations) {
  std::mt19937_64 rng(seed);
  const uint64_t specialUnits[] = {0, 1, 2, 0xFFFFFFFFull - 1, 0xFFFFFFFFull, 0x100000000ull,
                                   0x100000001ull, 1ull << 63, (1ull << 63) - 1,
                                   0xFFFFFFFFFFFFFFFFull};
  const size_t specialSizes[] = {16, 17, 31, 32, 33, 47, 63, 64, 65, 127, 128, 129, 240, 255, 256,
                                 257, 271, 496, 511, 512, 513, 527, 1024, 1040, 4095, 4096, 4111};
  const auto impls = Impls();
  for (int it = 0; it < iterations; ++it) {
    const size_t keyLen = (rng() & 1) ? 64 : 32;
    std::vector<uint8_t> key(keyLen);
    for (auto& b : key) b = static_cast<uint8_t>(rng());
    size_t unitSize;
    switch (rng() % 3) {
      case 0:
        unitSize = specialSizes[rng() % (sizeof(specialSizes) / sizeof(specialSizes[0]))];
        break;
      case 1: unitSize = 16 + rng() % 600; break;
      default: unitSize = 16 + rng() % 9000; break;
    }
    size_t count = 1 + rng() % (unitSize > 2048 ? 6 : 40);
    uint64_t first;
    if (rng() % 2) {
      first = specialUnits[rng() % (sizeof(specialUnits) / sizeof(specialUnits[0]))];
      // Also runs that end exactly at a special unit number.
      if (rng() % 2 && first >= count - 1) first -= count - 1;
    } else {
      first = rng();
    }
    if (first + (count - 1) < first) first = 0xFFFFFFFFFFFFFFFFull - (count - 1);

    std::vector<uint8_t> pt(unitSize * count), ref(unitSize * count);
    for (auto& b : pt) b = static_cast<uint8_t>(rng());
    for (size_t u = 0; u < count; ++u) {
      uint8_t t[16];
      UnitTweak(first + u, t);
      OsslXts(true, key.data(), keyLen, t, pt.data() + u * unitSize, ref.data() + u * unitSize,
              unitSize);
    }
    for (XtsImpl impl : impls) {
      auto e = vmseal::CreateXtsEngine(impl, key.data(), keyLen);
      const char* name = vmseal::XtsImplName(impl);
      std::vector<uint8_t> out(pt.size()), back(pt.size());
      e->EncryptUnits(pt.data(), out.data(), unitSize, count, first);
      CHECK(out == ref, "%s encrypt keyLen=%zu unit=%zu count=%zu first=%" PRIu64, name, keyLen,
            unitSize, count, first);
      e->DecryptUnits(out.data(), back.data(), unitSize, count, first);
      CHECK(back == pt, "%s decrypt keyLen=%zu unit=%zu count=%zu first=%" PRIu64, name, keyLen,
            unitSize, count, first);
      std::vector<uint8_t> inplace = pt;
      e->EncryptUnits(inplace.data(), inplace.data(), unitSize, count, first);
      CHECK(inplace == ref, "%s in-place encrypt unit=%zu count=%zu", name, unitSize, count);
      e->DecryptUnits(inplace.data(), inplace.data(), unitSize, count, first);
      CHECK(inplace == pt, "%s in-place decrypt unit=%zu count=%zu", name, unitSize, count);
      // The explicit-tweak entry points on the first unit.
      uint8_t t[16];
      UnitTweak(first, t);
      std::vector<uint8_t> one(unitSize);
      e->EncryptWithTweak(pt.data(), one.data(), unitSize, t);
      CHECK(std::memcmp(one.data(), ref.data(), unitSize) == 0, "%s EncryptWithTweak unit=%zu",
            name, unitSize);
      e->DecryptWithTweak(one.data(), one.data(), unitSize, t);
      CHECK(std::memcmp(one.data(), pt.data(), unitSize) == 0, "%s DecryptWithTweak unit=%zu",
            name, unitSize);
      // Arbitrary 128-bit tweaks (high half non-zero) against OpenSSL.
      uint8_t rt[16];
      for (auto& b : rt) b = static_cast<uint8_t>(rng());
      std::vector<uint8_t> want(unitSize);
      OsslXts(true, key.data(), keyLen, rt, pt.data(), want.data(), unitSize);
      e->EncryptWithTweak(pt.data(), one.data(), unitSize, rt);
      CHECK(one == want, "%s EncryptWithTweak random tweak unit=%zu", name, unitSize);
    }
  }
}

// Misaligned buffers (every offset 0..15 for input and output) and count == 0 (a no-op).
void TestAlignmentAndEmpty() {
  std::mt19937_64 rng(99);
  uint8_t key[64];
  for (auto& b : key) b = static_cast<uint8_t>(rng());
  for (XtsImpl impl : Impls()) {
    auto e = vmseal::CreateXtsEngine(impl, key, 64);
    const char* name = vmseal::XtsImplName(impl);
    for (size_t unit : {16, 40, 512, 4096 + 5}) {
      const size_t count = unit > 1000 ? 2 : 5;
      std::vector<uint8_t> pt(unit * count), ref(unit * count);
      for (auto& b : pt) b = static_cast<uint8_t>(rng());
      e->EncryptUnits(pt.data(), ref.data(), unit, count, 77);
      for (size_t inOff = 0; inOff < 16; inOff += (impl == XtsImpl::kPortable ? 5 : 1)) {
        const size_t outOff = (inOff * 7) % 16;
        std::vector<uint8_t> inBuf(pt.size() + 16), outBuf(pt.size() + 16);
        std::memcpy(inBuf.data() + inOff, pt.data(), pt.size());
        e->EncryptUnits(inBuf.data() + inOff, outBuf.data() + outOff, unit, count, 77);
        CHECK(std::memcmp(outBuf.data() + outOff, ref.data(), ref.size()) == 0,
              "%s misaligned encrypt in+%zu out+%zu unit=%zu", name, inOff, outOff, unit);
        e->DecryptUnits(outBuf.data() + outOff, inBuf.data() + inOff, unit, count, 77);
        CHECK(std::memcmp(inBuf.data() + inOff, pt.data(), pt.size()) == 0,
              "%s misaligned decrypt in+%zu out+%zu unit=%zu", name, inOff, outOff, unit);
      }
    }
    uint8_t guard[32];
    std::memset(guard, 0xC3, sizeof(guard));
    e->EncryptUnits(guard, guard, 16, 0, 5);
    e->DecryptUnits(guard, guard, 512, 0, 5);
    bool untouched = true;
    for (uint8_t b : guard) untouched = untouched && b == 0xC3;
    CHECK(untouched, "%s count=0 wrote output", name);
  }
}

// One engine used from several threads at once gives the same bytes as one thread.
void TestThreads() {
  uint8_t key[64];
  for (int i = 0; i < 64; ++i) key[i] = static_cast<uint8_t>(i * 13 + 5);
  for (XtsImpl impl : Impls()) {
    if (impl == XtsImpl::kPortable) continue;  // slow, and it has no shared state either
    auto e = vmseal::CreateXtsEngine(impl, key, 64);
    const size_t unit = 512, count = 2048;
    std::vector<uint8_t> pt(unit * count), one(pt.size()), many(pt.size());
    for (size_t i = 0; i < pt.size(); ++i) pt[i] = static_cast<uint8_t>(i * 31 + (i >> 9));
    e->EncryptUnits(pt.data(), one.data(), unit, count, 1000);
    std::vector<std::thread> threads;
    const size_t parts = 4, per = count / parts;
    for (size_t p = 0; p < parts; ++p) {
      threads.emplace_back([&, p] {
        for (int rep = 0; rep < 20; ++rep) {
          e->EncryptUnits(pt.data() + p * per * unit, many.data() + p * per * unit, unit, per,
                          1000 + p * per);
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(one == many, "%s multi-threaded result differs", vmseal::XtsImplName(impl));
  }
}

void TestDispatch() {
  XtsImpl p;
  CHECK(vmseal::ParseXtsImpl("portable", &p) && p == XtsImpl::kPortable, "parse portable");
  CHECK(vmseal::ParseXtsImpl("vaes-avx512", &p) && p == XtsImpl::kVaesAvx512, "parse avx512");
  CHECK(!vmseal::ParseXtsImpl("aes-ni", &p), "parse rejects unknown");
  CHECK(vmseal::XtsImplAvailable(XtsImpl::kPortable), "portable available");
  CHECK(vmseal::AvailableXtsImpls().back() == XtsImpl::kPortable, "portable last");
  CHECK(vmseal::BestXtsImpl() == vmseal::AvailableXtsImpls().front(), "best is first");
  uint8_t key[64] = {1};
  CHECK(vmseal::CreateXtsEngine(XtsImpl::kPortable, key, 48) == nullptr, "keyLen 48 refused");
  CHECK(vmseal::CreateXtsEngine(XtsImpl::kPortable, key, 16) == nullptr, "keyLen 16 refused");
  for (XtsImpl impl : Impls()) {
    auto e = vmseal::CreateXtsEngine(impl, key, 64);
    CHECK(e && e->impl() == impl, "impl() of %s", vmseal::XtsImplName(impl));
  }
  uint8_t w[37];
  std::memset(w, 0xAB, sizeof(w));
  vmseal::SecureWipe(w, sizeof(w));
  bool zero = true;
  for (uint8_t b : w) zero = zero && b == 0;
  CHECK(zero, "SecureWipe");
  const auto& f = vmseal::GetCpuFeatures();
  std::printf("cpu: aes=%d pclmul=%d sse41=%d avx=%d avx2=%d vaes=%d vpclmulqdq=%d avx512f=%d "
              "vl=%d "
              "bw=%d osAvx=%d osAvx512=%d preferYmm=%d\n",
              f.aes, f.pclmulqdq, f.sse41, f.avx, f.avx2, f.vaes, f.vpclmulqdq, f.avx512f,
              f.avx512vl, f.avx512bw, f.osAvx, f.osAvx512, f.preferYmm);
  std::printf("available:");
  for (XtsImpl impl : Impls()) std::printf(" %s", vmseal::XtsImplName(impl));
  std::printf("\n");
}

// ---- benchmark ----

// CPU time of this thread: unlike wall time it does not count the time other processes run on a
// shared machine (`openssl speed` also divides by CPU time unless given -elapsed).
double Now() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Best of 10 short trials: the machine is shared, and the best trial is the closest to the
// uncontended speed.
template <class F>
double MeasureGBs(size_t bytesPerCall, double seconds, F&& f) {
  f();  // warm up
  double best = 0;
  for (int trial = 0; trial < 10; ++trial) {
    size_t calls = 0;
    const double start = Now();
    double t;
    do {
      f();
      ++calls;
      t = Now() - start;
    } while (t < seconds / 10);
    const double gbs = static_cast<double>(bytesPerCall) * calls / t / 1e9;
    if (gbs > best) best = gbs;
  }
  return best;
}

void Bench(double seconds, const std::vector<std::string>& only) {
  const size_t total = 256 * 1024;  // batch per call; stays in L2
  std::vector<uint8_t> buf(total, 0x5A);
  uint8_t key[64];
  for (int i = 0; i < 64; ++i) key[i] = static_cast<uint8_t>(i * 7 + 1);
  std::printf("%-12s %4s %6s %9s %9s\n", "impl", "key", "unit", "enc GB/s", "dec GB/s");
  for (size_t keyLen : {32, 64}) {
    for (size_t unit : {512, 4096}) {
      for (XtsImpl impl : Impls()) {
        if (!only.empty()) {
          bool want = false;
          for (auto& o : only) want = want || o == vmseal::XtsImplName(impl);
          if (!want) continue;
        }
        auto e = vmseal::CreateXtsEngine(impl, key, keyLen);
        const size_t count = total / unit;
        const double s = impl == XtsImpl::kPortable ? seconds / 4 : seconds;
        uint64_t first = 1000;
        double enc = MeasureGBs(total, s, [&] {
          e->EncryptUnits(buf.data(), buf.data(), unit, count, first);
          first += count;
        });
        double dec = MeasureGBs(total, s, [&] {
          e->DecryptUnits(buf.data(), buf.data(), unit, count, first);
          first += count;
        });
        std::printf("%-12s %4zu %6zu %9.3f %9.3f\n", vmseal::XtsImplName(impl), keyLen * 4, unit,
                    enc, dec);
      }
      // OpenSSL EVP, one re-keyed-IV update per unit (what encrypting many sectors costs) and
      // one update per unit with a fixed context (what `openssl speed -evp` measures).
      EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
      const EVP_CIPHER* c = keyLen == 64 ? EVP_aes_256_xts() : EVP_aes_128_xts();
      EVP_CipherInit_ex(ctx, c, nullptr, key, nullptr, 1);
      uint8_t iv[16] = {0};
      const size_t count = total / unit;
      double ossl = MeasureGBs(total, seconds, [&] {
        for (size_t u = 0; u < count; ++u) {
          iv[0] = static_cast<uint8_t>(u);
          int outl;
          EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, -1);
          EVP_CipherUpdate(ctx, buf.data() + u * unit, &outl, buf.data() + u * unit,
                           static_cast<int>(unit));
        }
      });
      std::printf("%-12s %4zu %6zu %9.3f\n", "openssl-evp", keyLen * 4, unit, ossl);
      EVP_CIPHER_CTX_free(ctx);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--bench") {
    double secs = argc > 2 ? std::atof(argv[2]) : 1.0;
    std::vector<std::string> only;
    for (int i = 3; i < argc; ++i) only.push_back(argv[i]);
    Bench(secs, only);
    return 0;
  }
  int iterations = argc > 1 ? std::atoi(argv[1]) : 300;
  TestDispatch();
  TestVectors();
  TestAlignmentAndEmpty();
  TestThreads();
  TestTransfer();
  TestRandom(12345, iterations);
  TestRandom(static_cast<unsigned>(std::random_device{}()), iterations / 3 + 1);
  if (g_failures != 0) {
    std::printf("%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all XTS kernel and chunk transfer checks passed\n");
  return 0;
}
