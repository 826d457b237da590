// Portable XTS-AES engine on top of the constant-time bitsliced AES in aes_portable.cc.
//
// The bitsliced core always works on a batch of 8 blocks (4 without GCC/Clang vector types), so
// full blocks are processed a batch at a time (the tweaks for those blocks are computed first with
// a branch-free multiply by x), and the data unit's initial tweak, the last block before
// ciphertext stealing and the stolen block each use one batch call. Runs on every architecture;
// x86 CPUs with AES-NI use the other engines.
#include <cstring>

#include "aes_portable.h"
#include "xts_engine.h"
#include "xts_internal.h"

namespace vmseal {
namespace internal {
namespace {

struct Tweak {
  uint64_t lo, hi;  // the 16-byte tweak as a little-endian 128-bit integer
};

inline Tweak LoadTweak(const uint8_t* p) {
  Tweak t{0, 0};
  for (int i = 7; i >= 0; --i) {
    t.lo = (t.lo << 8) | p[i];
    t.hi = (t.hi << 8) | p[i + 8];
  }
  return t;
}

inline void StoreTweak(const Tweak& t, uint8_t* p) {
  for (int i = 0; i < 8; ++i) {
    p[i] = static_cast<uint8_t>(t.lo >> (8 * i));
    p[i + 8] = static_cast<uint8_t>(t.hi >> (8 * i));
  }
}

// Multiply by x in GF(2^128) mod x^128 + x^7 + x^2 + x + 1, without a secret-dependent branch.
inline Tweak MulX(const Tweak& t) {
  const uint64_t carry = t.hi >> 63;
  Tweak r;
  r.hi = (t.hi << 1) | (t.lo >> 63);
  r.lo = (t.lo << 1) ^ (0x87 & (0 - carry));
  return r;
}

inline void Xor16(uint8_t* dst, const uint8_t* a, const uint8_t* b) {
  for (int i = 0; i < 16; ++i) dst[i] = static_cast<uint8_t>(a[i] ^ b[i]);
}

class PortableXtsEngine final : public XtsEngine {
 public:
  PortableXtsEngine(const uint8_t* key, size_t keyLen) {
    const size_t half = keyLen / 2;
    AesPortableExpandKey(key, half, &key1_);
    AesPortableExpandKey(key + half, half, &key2_);
  }
  ~PortableXtsEngine() override {
    SecureWipe(&key1_, sizeof(key1_));
    SecureWipe(&key2_, sizeof(key2_));
  }
  XtsImpl impl() const override { return XtsImpl::kPortable; }

  void EncryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    Units(in, out, unitSize, count, firstUnit, true);
  }
  void DecryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    Units(in, out, unitSize, count, firstUnit, false);
  }
  void EncryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    Unit(in, out, len, tweak, true);
  }
  void DecryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    Unit(in, out, len, tweak, false);
  }

 private:
  void Units(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count, uint64_t first,
             bool encrypt) const {
    uint8_t tweak[16];
    for (size_t u = 0; u < count; ++u) {
      UnitTweakBytes(first + u, tweak);
      Unit(in + u * unitSize, out + u * unitSize, unitSize, tweak, encrypt);
    }
  }

  // One block through Key1 (direction per `encrypt`), XORed with `t` before and after.
  void OneBlock(const uint8_t* in, uint8_t* out, const Tweak& t, bool encrypt) const {
    uint8_t buf[kAesPortableBatchBytes] = {0};
    uint8_t tb[16];
    StoreTweak(t, tb);
    Xor16(buf, in, tb);
    if (encrypt) {
      AesPortableEncryptBatch(key1_, buf);
    } else {
      AesPortableDecryptBatch(key1_, buf);
    }
    Xor16(out, buf, tb);
    SecureWipe(buf, sizeof(buf));
  }

  void Unit(const uint8_t* in, uint8_t* out, size_t len, const uint8_t tweakIn[16],
            bool encrypt) const {
    uint8_t buf[kAesPortableBatchBytes] = {0};
    std::memcpy(buf, tweakIn, 16);
    AesPortableEncryptBatch(key2_, buf);
    Tweak t = LoadTweak(buf);

    const size_t fullBlocks = len / 16;
    const size_t tail = len % 16;
    // With stealing, the last full block is handled together with the partial one.
    const size_t bulk = tail != 0 ? fullBlocks - 1 : fullBlocks;
    size_t b = 0;
    uint8_t tws[kAesPortableBatchBytes];
    while (b < bulk) {
      const size_t n = bulk - b < kAesPortableBatchBlocks ? bulk - b : kAesPortableBatchBlocks;
      for (size_t i = 0; i < n; ++i) {
        StoreTweak(t, tws + 16 * i);
        t = MulX(t);
        Xor16(buf + 16 * i, in + 16 * (b + i), tws + 16 * i);
      }
      if (encrypt) {
        AesPortableEncryptBatch(key1_, buf);
      } else {
        AesPortableDecryptBatch(key1_, buf);
      }
      for (size_t i = 0; i < n; ++i) Xor16(out + 16 * (b + i), buf + 16 * i, tws + 16 * i);
      b += n;
    }
    if (tail != 0) {
      // IEEE 1619 §5.3: block m-1 (b == bulk) and the r-byte block m.
      const uint8_t* inLast = in + 16 * bulk;
      uint8_t* outLast = out + 16 * bulk;
      const Tweak tNext = MulX(t);
      uint8_t cc[16], pp[16];
      if (encrypt) {
        OneBlock(inLast, cc, t, true);
        std::memcpy(pp, inLast + 16, tail);  // read the partial plaintext before overwriting
        std::memcpy(pp + tail, cc + tail, 16 - tail);
        std::memcpy(outLast + 16, cc, tail);
        OneBlock(pp, outLast, tNext, true);
      } else {
        OneBlock(inLast, pp, tNext, false);
        std::memcpy(cc, inLast + 16, tail);
        std::memcpy(cc + tail, pp + tail, 16 - tail);
        std::memcpy(outLast + 16, pp, tail);
        OneBlock(cc, outLast, t, false);
      }
      SecureWipe(cc, sizeof(cc));
      SecureWipe(pp, sizeof(pp));
    }
    SecureWipe(buf, sizeof(buf));
    SecureWipe(tws, sizeof(tws));
  }

  AesPortableKey key1_;
  AesPortableKey key2_;
};

}  // namespace

std::unique_ptr<XtsEngine> CreatePortableXtsEngine(const uint8_t* key, size_t keyLen) {
  return std::unique_ptr<XtsEngine>(new PortableXtsEngine(key, keyLen));
}

}  // namespace internal
}  // namespace vmseal
