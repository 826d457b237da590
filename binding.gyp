# node-gyp build of vmseal's native AES-XTS addon (build/Release/vmseal_xts.node).
# CMakeLists.txt builds the same thing with cmake-js; keep the two source lists in step.
#
# Two targets, in the style of node-argon2: the crypto core (kernels per ISA, dispatch) as a static
# library with no N-API in it, and the addon (N-API glue + thread pool) linking it. ISA-specific
# kernel functions carry __attribute__((target(...))) (see native/xts_engine.h), so every file
# builds with the same flags and the binary runs on any x86-64 CPU (or any other architecture:
# the x86 kernels compile to nothing there and the portable engine remains).
{
  'variables': {
    'vmseal_cflags': [
      '-O3', '-Wall', '-Wextra', '-Werror', '-fvisibility=hidden', '-fPIC',
      '-U_FORTIFY_SOURCE', '-D_FORTIFY_SOURCE=2', '-fstack-protector-strong',
    ],
  },
  'target_defaults': {
    'cflags': ['<@(vmseal_cflags)'],
    'cflags_cc': ['-std=c++17', '-fexceptions'],
    'cflags!': ['-fno-exceptions'],
    'cflags_cc!': ['-fno-exceptions', '-std=gnu++17', '-std=gnu++20'],
    'xcode_settings': {
      'GCC_ENABLE_CPP_EXCEPTIONS': 'YES',
      'CLANG_CXX_LANGUAGE_STANDARD': 'c++17',
      'GCC_SYMBOLS_PRIVATE_EXTERN': 'YES',
      'OTHER_CFLAGS': ['-O3', '-Wall', '-Wextra', '-Werror'],
    },
    'msvs_settings': {
      'VCCLCompilerTool': { 'ExceptionHandling': 1, 'AdditionalOptions': ['/std:c++17'] },
    },
  },
  'targets': [
    {
      'target_name': 'vmseal_xts_core',
      'type': 'static_library',
      'sources': [
        'native/cpu_features.cc',
        'native/xts_dispatch.cc',
        'native/aes_portable.cc',
        'native/xts_portable.cc',
        'native/xts_aesni.cc',
        'native/xts_vaes_avx2.cc',
        'native/xts_vaes_avx512.cc',
        'native/chunk_transfer.cc',
      ],
      'include_dirs': ['native'],
      # GCC 12's AVX-512 intrinsics headers self-initialise a variable (_mm512_undefined_epi32) and
      # trip -Wmaybe-uninitialized at -O3 (GCC bug 105593, fixed in GCC 13).
      'cflags': ['-Wno-maybe-uninitialized'],
    },
    {
      'target_name': 'vmseal_xts',
      'dependencies': ['vmseal_xts_core'],
      'sources': [
        'native/addon.cc',
        'native/backup_chunks.cc',
        'native/fs_copy.cc',
        'native/fs_extents.cc',
        'native/fs_lock.cc',
        'native/fs_nowait.cc',
        'native/fs_transfer.cc',
        'native/fs_writeback.cc',
        'native/thread_pool.cc',
      ],
      'include_dirs': [
        'native',
        "<!(node -p \"require('node-addon-api').include_dir\")",
      ],
      'defines': [
        'NAPI_VERSION=8',
        'NODE_ADDON_API_DISABLE_DEPRECATED',
        'NAPI_CPP_EXCEPTIONS',
        'NODE_ADDON_API_CPP_EXCEPTIONS_ALL',
      ],
      'conditions': [
        ['OS=="linux"', { 'ldflags': ['-Wl,-z,relro,-z,now', '-Wl,-z,noexecstack'] }],
      ],
    },
  ],
}
