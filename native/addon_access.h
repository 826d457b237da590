// What addon.cc lends the other N-API sources that work on its objects (fs_transfer.cc): the key
// schedule behind a cipher handle and the native-owned memory behind an allocateBuffer() buffer,
// each as a shared owner, so that work on a pool thread keeps them alive whatever JavaScript does
// meanwhile (dispose(), garbage collection). Defined in addon.cc, next to the objects.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "xts_engine.h"

namespace vmseal {

// The engine of a cipher handle made by createCipher; throws the XTS calls' errors otherwise
// (ERR_INVALID_ARG_TYPE for another value, ERR_XTS_DISPOSED for a disposed handle).
std::shared_ptr<const XtsEngine> CipherEngineArg(Napi::Value value);

// A Uint8Array whose memory allocateBuffer() made: its first byte, owning the block (`*length` is
// the view's length). Throws ERR_INVALID_ARG_TYPE for anything that is not a Uint8Array,
// ERR_XTS_DETACHED for a detached one, and ERR_INVALID_ARG_VALUE for memory the addon does not own
// (a pool thread must never hold a pointer into memory JavaScript can take away).
std::shared_ptr<uint8_t> NativeOwnedArg(Napi::Value value, const char* argument, size_t* length);

// The XTS calls' unitSize and firstUnit arguments, checked as they check them.
size_t UnitSizeArg(Napi::Value value);
uint64_t UnitNumberArg(Napi::Value value);

}  // namespace vmseal
