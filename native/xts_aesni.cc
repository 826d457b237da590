// XTS-AES with AES-NI on xmm registers (legacy SSE encoding), plus the AES-NI key expansion that
// the VAES engines reuse.
//
// Algorithm. For each data unit: T0 = AES-Enc(Key2, unit number); block j uses T_j = T0 * x^j in
// GF(2^128) (reduction polynomial x^128 + x^7 + x^2 + x + 1, i.e. 0x87 folded into the low byte),
// C_j = AES(Key1, P_j ^ T_j) ^ T_j. A unit whose length is not a multiple of 16 steals ciphertext
// (IEEE 1619 §5.3), handled after the main loop so the loop has no length tests.
//
// Why this shape. aesenc has a latency of 3-4 cycles but the CPU starts one or two per cycle, so
// a single block leaves the AES unit mostly idle: the main loop keeps 8 independent blocks in
// flight (8 data + 8 tweak registers; round keys come from L1, since 16 xmm registers cannot
// also hold 15 keys). Each of the 8 tweaks steps by x^8 per iteration with a one-byte shift
// (pslldq) XOR the byte that left the top times 0x87 (psrldq + pclmulqdq): independent chains
// of 4 instructions instead of one serial multiply-by-x chain through all blocks (measured +20%
// over the serial version). The last round is aesenclast(x, key_last ^ T), which adds the output
// tweak for free. Initial tweaks of 8 units are encrypted together (8 blocks in flight) instead
// of one serial AES per unit.
//
// This file is compiled for plain SSE + AES-NI + PCLMULQDQ so it also runs on CPUs without AVX;
// it must not be called while ymm upper halves are dirty (the AVX engines end with vzeroupper).
#include "xts_internal.h"

#if VMSEAL_X86_64
#include <immintrin.h>
#endif

namespace vmseal {
namespace internal {

#if VMSEAL_X86_64

#define VMSEAL_AESNI VMSEAL_TARGET("aes,pclmul,sse4.1")

namespace {

// ---- key expansion ----------------------------------------------------------------------------

// key ^= key << 32 ^ key << 64 ^ key << 96 (the running XOR of the previous round key's words),
// then XOR the broadcast word produced by aeskeygenassist.
VMSEAL_AESNI VMSEAL_INLINE __m128i ExpandMix(__m128i key, __m128i word) {
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  key = _mm_xor_si128(key, _mm_slli_si128(key, 4));
  return _mm_xor_si128(key, word);
}

// Next AES-128 round key / even AES-256 round key: RotWord(SubWord(last word)) ^ rcon.
template <int RCON>
VMSEAL_AESNI VMSEAL_INLINE __m128i ExpandA(__m128i prev, __m128i last) {
  return ExpandMix(prev, _mm_shuffle_epi32(_mm_aeskeygenassist_si128(last, RCON), 0xff));
}

// Odd AES-256 round key: SubWord(last word) without rotation or rcon.
VMSEAL_AESNI VMSEAL_INLINE __m128i ExpandB(__m128i prev, __m128i last) {
  return ExpandMix(prev, _mm_shuffle_epi32(_mm_aeskeygenassist_si128(last, 0), 0xaa));
}

VMSEAL_AESNI void ExpandEnc128(const uint8_t* key, __m128i rk[11]) {
  rk[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  rk[1] = ExpandA<0x01>(rk[0], rk[0]);
  rk[2] = ExpandA<0x02>(rk[1], rk[1]);
  rk[3] = ExpandA<0x04>(rk[2], rk[2]);
  rk[4] = ExpandA<0x08>(rk[3], rk[3]);
  rk[5] = ExpandA<0x10>(rk[4], rk[4]);
  rk[6] = ExpandA<0x20>(rk[5], rk[5]);
  rk[7] = ExpandA<0x40>(rk[6], rk[6]);
  rk[8] = ExpandA<0x80>(rk[7], rk[7]);
  rk[9] = ExpandA<0x1b>(rk[8], rk[8]);
  rk[10] = ExpandA<0x36>(rk[9], rk[9]);
}

VMSEAL_AESNI void ExpandEnc256(const uint8_t* key, __m128i rk[15]) {
  rk[0] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key));
  rk[1] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + 16));
  rk[2] = ExpandA<0x01>(rk[0], rk[1]);
  rk[3] = ExpandB(rk[1], rk[2]);
  rk[4] = ExpandA<0x02>(rk[2], rk[3]);
  rk[5] = ExpandB(rk[3], rk[4]);
  rk[6] = ExpandA<0x04>(rk[4], rk[5]);
  rk[7] = ExpandB(rk[5], rk[6]);
  rk[8] = ExpandA<0x08>(rk[6], rk[7]);
  rk[9] = ExpandB(rk[7], rk[8]);
  rk[10] = ExpandA<0x10>(rk[8], rk[9]);
  rk[11] = ExpandB(rk[9], rk[10]);
  rk[12] = ExpandA<0x20>(rk[10], rk[11]);
  rk[13] = ExpandB(rk[11], rk[12]);
  rk[14] = ExpandA<0x40>(rk[12], rk[13]);
}

VMSEAL_AESNI void ExpandXtsKey(const uint8_t* key, size_t keyLen, AesniKeySchedule* out) {
  __m128i k1[15], k2[15];
  const int rounds = keyLen == 64 ? 14 : 10;
  if (rounds == 14) {
    ExpandEnc256(key, k1);
    ExpandEnc256(key + 32, k2);
  } else {
    ExpandEnc128(key, k1);
    ExpandEnc128(key + 16, k2);
  }
  __m128i* enc1 = reinterpret_cast<__m128i*>(out->enc1);
  __m128i* dec1 = reinterpret_cast<__m128i*>(out->dec1);
  __m128i* enc2 = reinterpret_cast<__m128i*>(out->enc2);
  for (int i = 0; i < 15; ++i) {
    const __m128i zero = _mm_setzero_si128();
    _mm_store_si128(enc1 + i, i <= rounds ? k1[i] : zero);
    _mm_store_si128(enc2 + i, i <= rounds ? k2[i] : zero);
    _mm_store_si128(dec1 + i, zero);
  }
  _mm_store_si128(dec1 + 0, k1[rounds]);
  for (int i = 1; i < rounds; ++i) _mm_store_si128(dec1 + i, _mm_aesimc_si128(k1[rounds - i]));
  _mm_store_si128(dec1 + rounds, k1[0]);
  out->rounds = rounds;
  for (int i = 0; i < 15; ++i) {
    k1[i] = _mm_setzero_si128();
    k2[i] = _mm_setzero_si128();
  }
  SecureWipe(k1, sizeof(k1));
  SecureWipe(k2, sizeof(k2));
}

// ---- XTS --------------------------------------------------------------------------------------

// T * x in GF(2^128): shift each qword left by one, then carry bit 63 into bit 64 and fold bit 127
// back as 0x87. psrad copies each dword's top bit; pshufd 0x13 routes dword 3's sign to dword 0
// and dword 1's sign to dword 2.
VMSEAL_AESNI VMSEAL_INLINE __m128i MulX(__m128i t) {
  const __m128i carryMask = _mm_set_epi32(0, 1, 0, 0x87);
  const __m128i signs = _mm_shuffle_epi32(_mm_srai_epi32(t, 31), 0x13);
  return _mm_xor_si128(_mm_slli_epi64(t, 1), _mm_and_si128(signs, carryMask));
}

// T * x^8: a one-byte shift of the 128-bit value, XOR the byte that left the top times 0x87.
VMSEAL_AESNI VMSEAL_INLINE __m128i MulX8(__m128i t, __m128i poly) {
  return _mm_xor_si128(_mm_slli_si128(t, 1),
                       _mm_clmulepi64_si128(_mm_srli_si128(t, 15), poly, 0x00));
}

VMSEAL_AESNI VMSEAL_INLINE __m128i LoadU(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
VMSEAL_AESNI VMSEAL_INLINE void StoreU(uint8_t* p, __m128i v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
}

template <int NR>
VMSEAL_AESNI VMSEAL_INLINE __m128i EncBlock(const __m128i* k, __m128i x) {
  x = _mm_xor_si128(x, _mm_load_si128(k));
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) x = _mm_aesenc_si128(x, _mm_load_si128(k + r));
  return _mm_aesenclast_si128(x, _mm_load_si128(k + NR));
}

template <int NR>
VMSEAL_AESNI VMSEAL_INLINE __m128i DecBlock(const __m128i* k, __m128i x) {
  x = _mm_xor_si128(x, _mm_load_si128(k));
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) x = _mm_aesdec_si128(x, _mm_load_si128(k + r));
  return _mm_aesdeclast_si128(x, _mm_load_si128(k + NR));
}

// Encrypt up to 8 initial tweaks (unit numbers first..first+n-1) under Key2.
template <int NR>
VMSEAL_AESNI VMSEAL_INLINE void UnitTweaks8(const __m128i* k2, uint64_t first, size_t n,
                                            __m128i tw[8]) {
  const __m128i k0 = _mm_load_si128(k2);
  VMSEAL_UNROLL
  for (int i = 0; i < 8; ++i) {
    tw[i] = _mm_xor_si128(_mm_set_epi64x(0, static_cast<long long>(first + i)), k0);
  }
  (void)n;  // lanes past n compute unused (wrapped-around) unit numbers; harmless
  VMSEAL_UNROLL
  for (int r = 1; r < NR; ++r) {
    const __m128i k = _mm_load_si128(k2 + r);
    VMSEAL_UNROLL
    for (int i = 0; i < 8; ++i) tw[i] = _mm_aesenc_si128(tw[i], k);
  }
  const __m128i kl = _mm_load_si128(k2 + NR);
  VMSEAL_UNROLL
  for (int i = 0; i < 8; ++i) tw[i] = _mm_aesenclast_si128(tw[i], kl);
}

// One data unit; `t` is the encrypted initial tweak.
template <int NR, bool ENC>
VMSEAL_AESNI void XtsUnit(const __m128i* k, const uint8_t* in, uint8_t* out, size_t len,
                          __m128i t) {
  const size_t full = len / 16;
  const size_t tail = len % 16;
  size_t bulk = tail != 0 ? full - 1 : full;
  const __m128i k0 = _mm_load_si128(k);
  const __m128i kl = _mm_load_si128(k + NR);
  if (bulk >= 8) {
    // Tweaks of the 8 blocks in flight; each steps by x^8 per iteration (independent chains).
    const __m128i poly = _mm_set_epi64x(0, 0x87);
    __m128i tw[8];
    tw[0] = t;
    VMSEAL_UNROLL
    for (int i = 1; i < 8; ++i) tw[i] = MulX(tw[i - 1]);
    do {
      __m128i x[8];
      VMSEAL_UNROLL
      for (int i = 0; i < 8; ++i) {
        x[i] = _mm_xor_si128(_mm_xor_si128(LoadU(in + 16 * i), tw[i]), k0);
      }
      VMSEAL_UNROLL
      for (int r = 1; r < NR; ++r) {
        const __m128i kr = _mm_load_si128(k + r);
        VMSEAL_UNROLL
        for (int i = 0; i < 8; ++i) {
          x[i] = ENC ? _mm_aesenc_si128(x[i], kr) : _mm_aesdec_si128(x[i], kr);
        }
      }
      VMSEAL_UNROLL
      for (int i = 0; i < 8; ++i) {
        const __m128i last = _mm_xor_si128(kl, tw[i]);
        x[i] = ENC ? _mm_aesenclast_si128(x[i], last) : _mm_aesdeclast_si128(x[i], last);
        StoreU(out + 16 * i, x[i]);
        tw[i] = MulX8(tw[i], poly);
      }
      in += 128;
      out += 128;
      bulk -= 8;
    } while (bulk >= 8);
    t = tw[0];
  }
  while (bulk > 0) {
    const __m128i x = _mm_xor_si128(LoadU(in), t);
    const __m128i y = ENC ? EncBlock<NR>(k, x) : DecBlock<NR>(k, x);
    StoreU(out, _mm_xor_si128(y, t));
    t = MulX(t);
    in += 16;
    out += 16;
    --bulk;
  }
  if (tail != 0) {
    // Ciphertext stealing over the last full block (at in/out) and the `tail`-byte block after it.
    alignas(16) uint8_t buf[16];
    const __m128i tNext = MulX(t);
    if (ENC) {
      const __m128i cc = _mm_xor_si128(EncBlock<NR>(k, _mm_xor_si128(LoadU(in), t)), t);
      StoreU(buf, cc);
      for (size_t i = 0; i < tail; ++i) {
        const uint8_t p = in[16 + i];  // read before the in-place write below
        out[16 + i] = buf[i];
        buf[i] = p;
      }
      const __m128i pp = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
      StoreU(out, _mm_xor_si128(EncBlock<NR>(k, _mm_xor_si128(pp, tNext)), tNext));
    } else {
      const __m128i pp = _mm_xor_si128(DecBlock<NR>(k, _mm_xor_si128(LoadU(in), tNext)), tNext);
      StoreU(buf, pp);
      for (size_t i = 0; i < tail; ++i) {
        const uint8_t c = in[16 + i];
        out[16 + i] = buf[i];
        buf[i] = c;
      }
      const __m128i cc = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
      StoreU(out, _mm_xor_si128(DecBlock<NR>(k, _mm_xor_si128(cc, t)), t));
    }
    SecureWipe(buf, sizeof(buf));
  }
}

template <int NR, bool ENC>
VMSEAL_AESNI void XtsUnits(const AesniKeySchedule& ks, const uint8_t* in, uint8_t* out,
                           size_t unitSize, size_t count, uint64_t first) {
  const __m128i* k1 = reinterpret_cast<const __m128i*>(ENC ? ks.enc1 : ks.dec1);
  const __m128i* k2 = reinterpret_cast<const __m128i*>(ks.enc2);
  size_t u = 0;
  while (u < count) {
    const size_t n = count - u < 8 ? count - u : 8;
    __m128i tw[8];
    UnitTweaks8<NR>(k2, first + u, n, tw);
    for (size_t i = 0; i < n; ++i) {
      XtsUnit<NR, ENC>(k1, in, out, unitSize, tw[i]);
      in += unitSize;
      out += unitSize;
    }
    u += n;
  }
}

template <bool ENC>
VMSEAL_AESNI void XtsWithTweak(const AesniKeySchedule& ks, const uint8_t* in, uint8_t* out,
                               size_t len, const uint8_t tweak[16]) {
  const __m128i* k1 = reinterpret_cast<const __m128i*>(ENC ? ks.enc1 : ks.dec1);
  const __m128i* k2 = reinterpret_cast<const __m128i*>(ks.enc2);
  if (ks.rounds == 14) {
    XtsUnit<14, ENC>(k1, in, out, len, EncBlock<14>(k2, LoadU(tweak)));
  } else {
    XtsUnit<10, ENC>(k1, in, out, len, EncBlock<10>(k2, LoadU(tweak)));
  }
}

// Clear the upper halves of the ymm/zmm registers before legacy-SSE code runs, in case code that
// ran before us (not ours: our AVX kernels end with vzeroupper) left them dirty; on Intel CPUs
// dirty upper state makes every SSE instruction merge with it, a large slowdown.
VMSEAL_TARGET("avx") void ZeroUpper() { _mm256_zeroupper(); }

class AesniXtsEngine final : public XtsEngine {
 public:
  AesniXtsEngine(const uint8_t* key, size_t keyLen) : zeroUpper_(GetCpuFeatures().osAvx) {
    ExpandXtsKey(key, keyLen, &ks_);
  }
  ~AesniXtsEngine() override { SecureWipe(&ks_, sizeof(ks_)); }
  XtsImpl impl() const override { return XtsImpl::kAesni; }

  void EncryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    if (zeroUpper_) ZeroUpper();
    if (ks_.rounds == 14) {
      XtsUnits<14, true>(ks_, in, out, unitSize, count, firstUnit);
    } else {
      XtsUnits<10, true>(ks_, in, out, unitSize, count, firstUnit);
    }
  }
  void DecryptUnits(const uint8_t* in, uint8_t* out, size_t unitSize, size_t count,
                    uint64_t firstUnit) const override {
    if (zeroUpper_) ZeroUpper();
    if (ks_.rounds == 14) {
      XtsUnits<14, false>(ks_, in, out, unitSize, count, firstUnit);
    } else {
      XtsUnits<10, false>(ks_, in, out, unitSize, count, firstUnit);
    }
  }
  void EncryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    if (zeroUpper_) ZeroUpper();
    XtsWithTweak<true>(ks_, in, out, len, tweak);
  }
  void DecryptWithTweak(const uint8_t* in, uint8_t* out, size_t len,
                        const uint8_t tweak[16]) const override {
    if (zeroUpper_) ZeroUpper();
    XtsWithTweak<false>(ks_, in, out, len, tweak);
  }

 private:
  AesniKeySchedule ks_;
  bool zeroUpper_;  // the OS enabled AVX state, so vzeroupper is available
};

}  // namespace

void AesniExpandXtsKey(const uint8_t* key, size_t keyLen, AesniKeySchedule* out) {
  ExpandXtsKey(key, keyLen, out);
}

std::unique_ptr<XtsEngine> CreateAesniXtsEngine(const uint8_t* key, size_t keyLen) {
  return std::unique_ptr<XtsEngine>(new AesniXtsEngine(key, keyLen));
}

#else  // !VMSEAL_X86_64

void AesniExpandXtsKey(const uint8_t*, size_t, AesniKeySchedule*) {}

std::unique_ptr<XtsEngine> CreateAesniXtsEngine(const uint8_t*, size_t) { return nullptr; }

#endif

}  // namespace internal
}  // namespace vmseal
