// Constant-time bitsliced AES; see aes_portable.h for the layout.
//
// Why this shape: a table S-box leaks key bits through the cache, so SubBytes is arithmetic.
// In bit-plane form one bitwise instruction acts on the same bit of every byte of the batch (64
// bytes per 64-bit lane, two lanes with vector types). The S-box inverts in the tower field
// GF((2^4)^2) (about 200 bitwise operations per batch), with the basis changes folded into the
// affine maps. ShiftRows rotates each row's bits inside a
// 16-bit lane of every plane; MixColumns rotates inside 4-bit nibbles (one column) and applies
// xtime by renaming planes.
#include "aes_portable.h"

#include <cstring>

namespace vmseal {
namespace internal {
namespace {

// The round functions are forced inline so the planes stay in registers (or at least in one
// stack frame) instead of being passed through memory between calls.
#if defined(__GNUC__) || defined(__clang__)
#define AES_CT_INLINE inline __attribute__((always_inline))
#else
#define AES_CT_INLINE __forceinline
#endif

typedef AesWord W;
typedef W Planes[8];

// Transpose an 8x8 bit matrix held in a word: bit 8*i+j moves to bit 8*j+i.
inline uint64_t Transpose8x8(uint64_t x) {
  uint64_t t;
  t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  x = x ^ t ^ (t << 28);
  return x;
}

inline uint64_t LoadLe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

inline void StoreLe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// One lane: 64 bytes -> 8 plane words.
void ToPlanes64(const uint8_t in[64], uint64_t out[8]) {
  uint64_t t[8];
  for (int k = 0; k < 8; ++k) t[k] = Transpose8x8(LoadLe64(in + 8 * k));
  // Byte j of t[k] holds bit j of bytes 8k..8k+7; plane j gathers byte j of every t[k].
  for (int j = 0; j < 8; ++j) {
    uint64_t p = 0;
    for (int k = 0; k < 8; ++k) p |= ((t[k] >> (8 * j)) & 0xFF) << (8 * k);
    out[j] = p;
  }
}

void FromPlanes64(const uint64_t in[8], uint8_t out[64]) {
  for (int k = 0; k < 8; ++k) {
    uint64_t t = 0;
    for (int j = 0; j < 8; ++j) t |= ((in[j] >> (8 * k)) & 0xFF) << (8 * j);
    StoreLe64(out + 8 * k, Transpose8x8(t));
  }
}

// kAesPortableBatchBytes bytes -> 8 plane words (lane L from bytes 64L..64L+63).
void ToPlanes(const uint8_t* in, Planes out) {
  uint64_t lanes[kAesPortableLanes][8];
  for (size_t l = 0; l < kAesPortableLanes; ++l) ToPlanes64(in + 64 * l, lanes[l]);
  for (int j = 0; j < 8; ++j) {
    uint64_t word[kAesPortableLanes];
    for (size_t l = 0; l < kAesPortableLanes; ++l) word[l] = lanes[l][j];
    std::memcpy(&out[j], word, sizeof(W));  // lane l of a vector is its l-th element in memory
  }
}

void FromPlanes(const Planes in, uint8_t* out) {
  uint64_t lanes[kAesPortableLanes][8];
  for (int j = 0; j < 8; ++j) {
    uint64_t word[kAesPortableLanes];
    std::memcpy(word, &in[j], sizeof(W));
    for (size_t l = 0; l < kAesPortableLanes; ++l) lanes[l][j] = word[l];
  }
  for (size_t l = 0; l < kAesPortableLanes; ++l) FromPlanes64(lanes[l], out + 64 * l);
}

// ---- SubBytes through the tower field GF((2^4)^2) --------------------------------------------
//
// Inverting in GF(2^8) directly costs ~4 multiplications of 8-bit polynomials; in the isomorphic
// tower GF(16)[y]/(y^2 + y + lambda) an inverse needs five GF(16) multiplications (16 ANDs and
// 15 XORs each on bit planes) plus linear maps. The change of basis into the tower is merged with
// the inverse affine map (InvSubBytes), and the way back with the affine map (SubBytes).
// Matrices and lambda = z^3 come from native/test/gen_tower_maps.py, which checks the
// isomorphism; the known-answer tests check the S-box end to end.
// A tower element ah*y + al has al in planes 0..3 and ah in planes 4..7;
// GF(16) = GF(2)[z]/(z^4 + z + 1) with bit i = coefficient of z^i.

const W kOnes = ~W{};

AES_CT_INLINE void Mul16(const W a[4], const W b[4], W out[4]) {
  const W c0 = a[0] & b[0];
  const W c1 = (a[0] & b[1]) ^ (a[1] & b[0]);
  const W c2 = (a[0] & b[2]) ^ (a[1] & b[1]) ^ (a[2] & b[0]);
  const W c3 = (a[0] & b[3]) ^ (a[1] & b[2]) ^ (a[2] & b[1]) ^ (a[3] & b[0]);
  const W c4 = (a[1] & b[3]) ^ (a[2] & b[2]) ^ (a[3] & b[1]);
  const W c5 = (a[2] & b[3]) ^ (a[3] & b[2]);
  const W c6 = a[3] & b[3];
  // z^4 = z + 1, z^5 = z^2 + z, z^6 = z^3 + z^2
  out[0] = c0 ^ c4;
  out[1] = c1 ^ c4 ^ c5;
  out[2] = c2 ^ c5 ^ c6;
  out[3] = c3 ^ c6;
}

// a^2 = a0 + a1 z^2 + a2 z^4 + a3 z^6 reduced (squaring is linear over GF(2)).
AES_CT_INLINE void Square16(const W a[4], W out[4]) {
  out[0] = a[0] ^ a[2];
  out[1] = a[2];
  out[2] = a[1] ^ a[3];
  out[3] = a[3];
}

// Inverse in the tower (0 maps to 0): for a = ah*y + al,
//   d = lambda*ah^2 + ah*al + al^2,  a^-1 = (ah*y + (ah + al)) * d^-1,  d^-1 = d^14 in GF(16).
AES_CT_INLINE void TowerInvert(const W in[8], W out[8]) {
  const W* al = in;
  const W* ah = in + 4;
  W p[4], sq[4], d[4];
  Mul16(ah, al, p);
  Square16(al, sq);
  // lambda * ah^2, lambda = z^3
  d[0] = ah[2] ^ p[0] ^ sq[0];
  d[1] = ah[1] ^ ah[2] ^ ah[3] ^ p[1] ^ sq[1];
  d[2] = ah[1] ^ p[2] ^ sq[2];
  d[3] = ah[0] ^ ah[2] ^ ah[3] ^ p[3] ^ sq[3];
  W d2[4], d4[4], d8[4], d6[4], di[4];
  Square16(d, d2);
  Square16(d2, d4);
  Square16(d4, d8);
  Mul16(d2, d4, d6);
  Mul16(d6, d8, di);
  W sum[4];
  for (int i = 0; i < 4; ++i) sum[i] = ah[i] ^ al[i];
  Mul16(sum, di, out);
  Mul16(ah, di, out + 4);
}

// AES basis -> tower basis.
AES_CT_INLINE void ToTower(const W in[8], W out[8]) {
  out[0] = in[0] ^ in[5] ^ in[7];
  out[1] = in[2];
  out[2] = in[2] ^ in[3] ^ in[4] ^ in[5] ^ in[6] ^ in[7];
  out[3] = in[3] ^ in[4];
  out[4] = in[4] ^ in[5] ^ in[6];
  out[5] = in[1] ^ in[4] ^ in[6] ^ in[7];
  out[6] = in[2] ^ in[3] ^ in[5] ^ in[7];
  out[7] = in[5] ^ in[7];
}

// Tower basis -> AES basis, then the S-box affine map (x -> L(x) ^ 0x63).
AES_CT_INLINE void FromTowerAffine(const W in[8], W out[8]) {
  out[0] = in[0] ^ in[2] ^ in[6] ^ kOnes;
  out[1] = in[0] ^ in[1] ^ in[2] ^ in[3] ^ in[4] ^ in[5] ^ kOnes;
  out[2] = in[0] ^ in[3] ^ in[5] ^ in[6];
  out[3] = in[0] ^ in[2] ^ in[5];
  out[4] = in[0] ^ in[1] ^ in[3] ^ in[4] ^ in[5];
  out[5] = in[1] ^ in[2] ^ in[3] ^ in[5] ^ in[6] ^ in[7] ^ kOnes;
  out[6] = in[4] ^ in[6] ^ in[7] ^ kOnes;
  out[7] = in[1] ^ in[2];
}

// The inverse affine map (x -> L^-1(x ^ 0x63)), then AES basis -> tower basis.
AES_CT_INLINE void InvAffineToTower(const W in[8], W out[8]) {
  out[0] = in[1] ^ in[5] ^ in[6] ^ kOnes;
  out[1] = in[1] ^ in[4] ^ in[7] ^ kOnes;
  out[2] = in[1] ^ in[4] ^ kOnes;
  out[3] = in[0] ^ in[1] ^ in[2] ^ in[3] ^ in[5] ^ in[6];
  out[4] = in[0] ^ in[1] ^ in[2] ^ in[4] ^ in[5] ^ in[6] ^ in[7];
  out[5] = in[3] ^ in[4] ^ in[5] ^ in[6];
  out[6] = in[0] ^ in[4] ^ in[5] ^ in[6] ^ kOnes;
  out[7] = in[1] ^ in[2] ^ in[6] ^ in[7];
}

// Tower basis -> AES basis.
AES_CT_INLINE void FromTower(const W in[8], W out[8]) {
  out[0] = in[0] ^ in[7];
  out[1] = in[4] ^ in[5] ^ in[7];
  out[2] = in[1];
  out[3] = in[1] ^ in[6] ^ in[7];
  out[4] = in[1] ^ in[3] ^ in[6] ^ in[7];
  out[5] = in[2] ^ in[4] ^ in[6];
  out[6] = in[1] ^ in[2] ^ in[3] ^ in[7];
  out[7] = in[2] ^ in[4] ^ in[6] ^ in[7];
}

AES_CT_INLINE void SubBytes(Planes s) {
  W t[8], inv[8];
  ToTower(s, t);
  TowerInvert(t, inv);
  FromTowerAffine(inv, s);
}

AES_CT_INLINE void InvSubBytes(Planes s) {
  W t[8], inv[8];
  InvAffineToTower(s, t);
  TowerInvert(t, inv);
  FromTower(inv, s);
}

// Per-16-bit-lane masks: row r of every column is bits r, r+4, r+8, r+12.
constexpr uint64_t kRow0 = 0x1111111111111111ull;

// Rotate the bits of `x` (only row-r bits set) right by s inside each 16-bit lane.
AES_CT_INLINE W RotrLanes16(W x, int s) {
  if (s == 0) return x;
  const uint64_t lowMask = 0xFFFFull >> s;  // bits 0..15-s of a lane
  uint64_t lo = 0;
  for (int l = 0; l < 4; ++l) lo |= lowMask << (16 * l);
  return ((x >> s) & lo) | ((x << (16 - s)) & ~lo);
}

// new(r, c) = old(r, c + r): row r's bits rotate right by 4r inside a 16-bit lane.
AES_CT_INLINE void ShiftRows(Planes s) {
  for (int j = 0; j < 8; ++j) {
    const W x = s[j];
    s[j] = (x & kRow0) | RotrLanes16(x & (kRow0 << 1), 4) | RotrLanes16(x & (kRow0 << 2), 8) |
           RotrLanes16(x & (kRow0 << 3), 12);
  }
}

AES_CT_INLINE void InvShiftRows(Planes s) {
  for (int j = 0; j < 8; ++j) {
    const W x = s[j];
    s[j] = (x & kRow0) | RotrLanes16(x & (kRow0 << 1), 12) | RotrLanes16(x & (kRow0 << 2), 8) |
           RotrLanes16(x & (kRow0 << 3), 4);
  }
}

// Inside every nibble (one column): result row r = row r+1 / r+2 of x.
AES_CT_INLINE W RotNibble1(W x) {
  return ((x >> 1) & 0x7777777777777777ull) | ((x << 3) & 0x8888888888888888ull);
}
AES_CT_INLINE W RotNibble2(W x) {
  return ((x >> 2) & 0x3333333333333333ull) | ((x << 2) & 0xCCCCCCCCCCCCCCCCull);
}

// Multiply every byte by x: plane j takes plane j-1; the carry plane 7 folds in as 0x1b.
AES_CT_INLINE void Xtime(const Planes a, Planes out) {
  const W hi = a[7];
  out[7] = a[6];
  out[6] = a[5];
  out[5] = a[4];
  out[4] = a[3] ^ hi;
  out[3] = a[2] ^ hi;
  out[2] = a[1];
  out[1] = a[0] ^ hi;
  out[0] = hi;
}

// out[r] = 2*(a[r]^a[r+1]) ^ a[r+1] ^ a[r+2] ^ a[r+3]
AES_CT_INLINE void MixColumns(Planes s) {
  Planes a1, t, x;
  for (int j = 0; j < 8; ++j) {
    a1[j] = RotNibble1(s[j]);
    t[j] = s[j] ^ a1[j];
  }
  Xtime(t, x);
  for (int j = 0; j < 8; ++j) s[j] = x[j] ^ a1[j] ^ RotNibble2(t[j]);
}

// InvMixColumns = MixColumns after a[r] ^= 4*(a[r] ^ a[r+2]).
AES_CT_INLINE void InvMixColumns(Planes s) {
  Planes u, u2, u4;
  for (int j = 0; j < 8; ++j) u[j] = s[j] ^ RotNibble2(s[j]);
  Xtime(u, u2);
  Xtime(u2, u4);
  for (int j = 0; j < 8; ++j) s[j] ^= u4[j];
  MixColumns(s);
}

AES_CT_INLINE void AddRoundKey(Planes s, const AesPlanes& k) {
  for (int j = 0; j < 8; ++j) s[j] ^= k.w[j];
}

void SubWordBytes(uint8_t w[4]) {
  uint8_t buf[kAesPortableBatchBytes] = {0};
  std::memcpy(buf, w, 4);
  Planes p;
  ToPlanes(buf, p);
  SubBytes(p);
  FromPlanes(p, buf);
  std::memcpy(w, buf, 4);
  std::memset(buf, 0, sizeof(buf));
}

}  // namespace

void AesPortableExpandKey(const uint8_t* key, size_t keyLen, AesPortableKey* out) {
  const int nk = static_cast<int>(keyLen / 4);
  const int rounds = nk + 6;
  const int words = 4 * (rounds + 1);
  uint8_t w[60][4];
  std::memcpy(w, key, keyLen);
  uint8_t rcon = 1;
  for (int i = nk; i < words; ++i) {
    uint8_t t[4];
    std::memcpy(t, w[i - 1], 4);
    if (i % nk == 0) {
      const uint8_t t0 = t[0];
      t[0] = t[1];
      t[1] = t[2];
      t[2] = t[3];
      t[3] = t0;
      SubWordBytes(t);
      t[0] ^= rcon;
      rcon = static_cast<uint8_t>((rcon << 1) ^ ((rcon >> 7) * 0x1b));  // rcon is public
    } else if (nk > 6 && i % nk == 4) {
      SubWordBytes(t);
    }
    for (int b = 0; b < 4; ++b) w[i][b] = static_cast<uint8_t>(w[i - nk][b] ^ t[b]);
  }
  out->rounds = rounds;
  uint8_t buf[kAesPortableBatchBytes];
  for (int r = 0; r <= rounds; ++r) {
    for (size_t blk = 0; blk < kAesPortableBatchBlocks; ++blk) {
      std::memcpy(buf + 16 * blk, w[4 * r], 16);
    }
    ToPlanes(buf, out->rk[r].w);
  }
  for (int r = rounds + 1; r < 15; ++r) {
    for (int j = 0; j < 8; ++j) out->rk[r].w[j] = W{};
  }
  volatile uint8_t* vw = &w[0][0];
  for (size_t i = 0; i < sizeof(w); ++i) vw[i] = 0;
  volatile uint8_t* vb = buf;
  for (size_t i = 0; i < sizeof(buf); ++i) vb[i] = 0;
}

void AesPortableEncryptBatch(const AesPortableKey& key, uint8_t* blocks) {
  Planes s;
  ToPlanes(blocks, s);
  AddRoundKey(s, key.rk[0]);
  for (int r = 1; r < key.rounds; ++r) {
    SubBytes(s);
    ShiftRows(s);
    MixColumns(s);
    AddRoundKey(s, key.rk[r]);
  }
  SubBytes(s);
  ShiftRows(s);
  AddRoundKey(s, key.rk[key.rounds]);
  FromPlanes(s, blocks);
}

void AesPortableDecryptBatch(const AesPortableKey& key, uint8_t* blocks) {
  Planes s;
  ToPlanes(blocks, s);
  AddRoundKey(s, key.rk[key.rounds]);
  for (int r = key.rounds - 1; r >= 1; --r) {
    InvShiftRows(s);
    InvSubBytes(s);
    AddRoundKey(s, key.rk[r]);
    InvMixColumns(s);
  }
  InvShiftRows(s);
  InvSubBytes(s);
  AddRoundKey(s, key.rk[0]);
  FromPlanes(s, blocks);
}

}  // namespace internal
}  // namespace vmseal
