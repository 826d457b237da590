// Run-time selection of the AES-XTS implementation and engine construction.
#include <cstring>

#include "xts_engine.h"
#include "xts_internal.h"

namespace vmseal {

const char* XtsImplName(XtsImpl impl) {
  switch (impl) {
    case XtsImpl::kPortable: return "portable";
    case XtsImpl::kAesni: return "aesni";
    case XtsImpl::kVaesAvx2: return "vaes-avx2";
    case XtsImpl::kVaesAvx512: return "vaes-avx512";
  }
  return "unknown";
}

bool ParseXtsImpl(const std::string& name, XtsImpl* out) {
  static const XtsImpl kAll[] = {XtsImpl::kPortable, XtsImpl::kAesni, XtsImpl::kVaesAvx2,
                                 XtsImpl::kVaesAvx512};
  for (XtsImpl impl : kAll) {
    if (name == XtsImplName(impl)) {
      if (out != nullptr) *out = impl;
      return true;
    }
  }
  return false;
}

bool XtsImplAvailable(XtsImpl impl) {
  const CpuFeatures& f = GetCpuFeatures();
  switch (impl) {
    case XtsImpl::kPortable:
      return true;
    case XtsImpl::kAesni:
      return VMSEAL_X86_64 && f.aes && f.pclmulqdq && f.sse41;
    case XtsImpl::kVaesAvx2:
      return VMSEAL_X86_64 && f.aes && f.pclmulqdq && f.sse41 && f.avx && f.avx2 && f.vaes &&
             f.vpclmulqdq && f.osAvx;
    case XtsImpl::kVaesAvx512:
      return VMSEAL_X86_64 && f.aes && f.pclmulqdq && f.sse41 && f.avx && f.avx2 && f.vaes &&
             f.vpclmulqdq && f.avx512f && f.avx512vl && f.avx512bw && f.osAvx && f.osAvx512;
  }
  return false;
}

std::vector<XtsImpl> AvailableXtsImpls() {
  std::vector<XtsImpl> out;
  static const XtsImpl kFastestFirst[] = {XtsImpl::kVaesAvx512, XtsImpl::kVaesAvx2,
                                          XtsImpl::kAesni, XtsImpl::kPortable};
  static const XtsImpl kYmmFirst[] = {XtsImpl::kVaesAvx2, XtsImpl::kVaesAvx512, XtsImpl::kAesni,
                                      XtsImpl::kPortable};
  for (XtsImpl impl : GetCpuFeatures().preferYmm ? kYmmFirst : kFastestFirst) {
    if (XtsImplAvailable(impl)) out.push_back(impl);
  }
  return out;
}

XtsImpl BestXtsImpl() { return AvailableXtsImpls().front(); }

std::unique_ptr<XtsEngine> CreateXtsEngine(XtsImpl impl, const uint8_t* key, size_t keyLen) {
  if (key == nullptr || (keyLen != 32 && keyLen != 64)) return nullptr;
  if (!XtsImplAvailable(impl)) return nullptr;
  switch (impl) {
    case XtsImpl::kPortable: return internal::CreatePortableXtsEngine(key, keyLen);
    case XtsImpl::kAesni: return internal::CreateAesniXtsEngine(key, keyLen);
    case XtsImpl::kVaesAvx2: return internal::CreateVaesAvx2XtsEngine(key, keyLen);
    case XtsImpl::kVaesAvx512: return internal::CreateVaesAvx512XtsEngine(key, keyLen);
  }
  return nullptr;
}

void SecureWipe(void* p, size_t n) {
  if (p == nullptr || n == 0) return;
#if defined(__GNUC__) || defined(__clang__)
  std::memset(p, 0, n);
  // Tell the compiler the zeroed memory is observed, so the stores cannot be dropped as dead.
  __asm__ __volatile__("" : : "r"(p) : "memory");
#else
  volatile uint8_t* v = static_cast<volatile uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) v[i] = 0;
#endif
}

}  // namespace vmseal
