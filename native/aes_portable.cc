// Constant-time bitsliced AES; see aes_portable.h for the layout.
//
// Why this shape: a table S-box leaks key bits through the cache, so SubBytes is arithmetic.
// In bit-plane form one bitwise instruction acts on the same bit of all 64 bytes of four blocks,
// so a GF(2^8) multiplication is 64 ANDs and ~80 XORs for 64 bytes. The inverse x^254 uses the
// chain x^2, x^3, x^12, x^15, x^240, x^252, x^254: 4 multiplications + 7 squarings (squaring is
// linear in GF(2), so it is only a reduction). ShiftRows rotates each row's bits inside a 16-bit
// lane of every plane; MixColumns rotates inside 4-bit nibbles (one column) and applies xtime
// by renaming planes.
#include "aes_portable.h"

#include <cstring>

namespace vmseal {
namespace internal {
namespace {

typedef uint64_t Planes[8];

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

// 64 bytes -> 8 planes.
void ToPlanes(const uint8_t in[64], Planes out) {
  uint64_t t[8];
  for (int k = 0; k < 8; ++k) t[k] = Transpose8x8(LoadLe64(in + 8 * k));
  // Byte j of t[k] holds bit j of bytes 8k..8k+7; plane j gathers byte j of every t[k].
  for (int j = 0; j < 8; ++j) {
    uint64_t p = 0;
    for (int k = 0; k < 8; ++k) p |= ((t[k] >> (8 * j)) & 0xFF) << (8 * k);
    out[j] = p;
  }
}

void FromPlanes(const Planes in, uint8_t out[64]) {
  for (int k = 0; k < 8; ++k) {
    uint64_t t = 0;
    for (int j = 0; j < 8; ++j) t |= ((in[j] >> (8 * k)) & 0xFF) << (8 * j);
    StoreLe64(out + 8 * k, Transpose8x8(t));
  }
}

// Reduce a product of degree <= 14 modulo the AES polynomial x^8 + x^4 + x^3 + x + 1.
inline void Reduce(uint64_t c[15], Planes out) {
  for (int k = 14; k >= 8; --k) {
    c[k - 8] ^= c[k];
    c[k - 7] ^= c[k];
    c[k - 5] ^= c[k];
    c[k - 4] ^= c[k];
  }
  for (int j = 0; j < 8; ++j) out[j] = c[j];
}

void GfMul(const Planes a, const Planes b, Planes out) {
  uint64_t c[15] = {0};
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 8; ++j) c[i + j] ^= a[i] & b[j];
  }
  Reduce(c, out);
}

void GfSquare(const Planes a, Planes out) {
  uint64_t c[15] = {0};
  for (int i = 0; i < 8; ++i) c[2 * i] = a[i];
  Reduce(c, out);
}

// a^254 = a^-1 in GF(2^8) (and 0 for 0).
void GfInvert(const Planes a, Planes out) {
  Planes x2, x3, x12, x15, x240, x252, t;
  GfSquare(a, x2);
  GfMul(x2, a, x3);
  GfSquare(x3, t);
  GfSquare(t, x12);
  GfMul(x12, x3, x15);
  GfSquare(x15, t);
  GfSquare(t, x240);
  GfSquare(x240, t);
  GfSquare(t, x240);  // x15^16 = x240
  GfMul(x240, x12, x252);
  GfMul(x252, x2, out);
}

inline uint64_t ConstPlane(unsigned c, int j) { return 0 - static_cast<uint64_t>((c >> j) & 1); }

void SubBytes(Planes s) {
  Planes inv;
  GfInvert(s, inv);
  // s = b ^ rotl(b,1) ^ rotl(b,2) ^ rotl(b,3) ^ rotl(b,4) ^ 0x63; rotl(b,k) has b_{j-k} in plane j.
  for (int j = 0; j < 8; ++j) {
    s[j] = inv[j] ^ inv[(j + 7) & 7] ^ inv[(j + 6) & 7] ^ inv[(j + 5) & 7] ^ inv[(j + 4) & 7] ^
           ConstPlane(0x63, j);
  }
}

void InvSubBytes(Planes s) {
  // Inverse affine map: rotl(s,1) ^ rotl(s,3) ^ rotl(s,6) ^ 0x05, then invert.
  Planes b;
  for (int j = 0; j < 8; ++j) {
    b[j] = s[(j + 7) & 7] ^ s[(j + 5) & 7] ^ s[(j + 2) & 7] ^ ConstPlane(0x05, j);
  }
  GfInvert(b, s);
}

// Per-16-bit-lane masks: row r of every column is bits r, r+4, r+8, r+12.
constexpr uint64_t kRow0 = 0x1111111111111111ull;

// Rotate the bits of `x` (only row-r bits set) right by s inside each 16-bit lane.
inline uint64_t RotrLanes16(uint64_t x, int s) {
  if (s == 0) return x;
  const uint64_t lowMask = 0xFFFFull >> s;  // bits 0..15-s of a lane
  uint64_t lo = 0;
  for (int l = 0; l < 4; ++l) lo |= lowMask << (16 * l);
  return ((x >> s) & lo) | ((x << (16 - s)) & ~lo);
}

// new(r, c) = old(r, c + r): row r's bits rotate right by 4r inside a 16-bit lane.
void ShiftRows(Planes s) {
  for (int j = 0; j < 8; ++j) {
    const uint64_t x = s[j];
    s[j] = (x & kRow0) | RotrLanes16(x & (kRow0 << 1), 4) | RotrLanes16(x & (kRow0 << 2), 8) |
           RotrLanes16(x & (kRow0 << 3), 12);
  }
}

void InvShiftRows(Planes s) {
  for (int j = 0; j < 8; ++j) {
    const uint64_t x = s[j];
    s[j] = (x & kRow0) | RotrLanes16(x & (kRow0 << 1), 12) | RotrLanes16(x & (kRow0 << 2), 8) |
           RotrLanes16(x & (kRow0 << 3), 4);
  }
}

// Inside every nibble (one column): result row r = row r+1 / r+2 of x.
inline uint64_t RotNibble1(uint64_t x) {
  return ((x >> 1) & 0x7777777777777777ull) | ((x << 3) & 0x8888888888888888ull);
}
inline uint64_t RotNibble2(uint64_t x) {
  return ((x >> 2) & 0x3333333333333333ull) | ((x << 2) & 0xCCCCCCCCCCCCCCCCull);
}

// Multiply every byte by x: plane j takes plane j-1; the carry plane 7 folds in as 0x1b.
inline void Xtime(const Planes a, Planes out) {
  const uint64_t hi = a[7];
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
void MixColumns(Planes s) {
  Planes a1, t, x;
  for (int j = 0; j < 8; ++j) {
    a1[j] = RotNibble1(s[j]);
    t[j] = s[j] ^ a1[j];
  }
  Xtime(t, x);
  for (int j = 0; j < 8; ++j) s[j] = x[j] ^ a1[j] ^ RotNibble2(t[j]);
}

// InvMixColumns = MixColumns after a[r] ^= 4*(a[r] ^ a[r+2]).
void InvMixColumns(Planes s) {
  Planes u, u2, u4;
  for (int j = 0; j < 8; ++j) u[j] = s[j] ^ RotNibble2(s[j]);
  Xtime(u, u2);
  Xtime(u2, u4);
  for (int j = 0; j < 8; ++j) s[j] ^= u4[j];
  MixColumns(s);
}

inline void AddRoundKey(Planes s, const AesPlanes& k) {
  for (int j = 0; j < 8; ++j) s[j] ^= k.w[j];
}

void SubWordBytes(uint8_t w[4]) {
  uint8_t buf[64] = {0};
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
  uint8_t buf[64];
  for (int r = 0; r <= rounds; ++r) {
    for (int blk = 0; blk < 4; ++blk) std::memcpy(buf + 16 * blk, w[4 * r], 16);
    ToPlanes(buf, out->rk[r].w);
  }
  for (int r = rounds + 1; r < 15; ++r) std::memset(out->rk[r].w, 0, sizeof(out->rk[r].w));
  volatile uint8_t* vw = &w[0][0];
  for (size_t i = 0; i < sizeof(w); ++i) vw[i] = 0;
  volatile uint8_t* vb = buf;
  for (size_t i = 0; i < sizeof(buf); ++i) vb[i] = 0;
}

void AesPortableEncrypt4(const AesPortableKey& key, uint8_t blocks[64]) {
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

void AesPortableDecrypt4(const AesPortableKey& key, uint8_t blocks[64]) {
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
