// Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011), the hash behind jax.random's default PRNG, as an XLA FFI handler for the CPU backend:
// elementwise over four uint32 arrays of one shape (key words k1, k2; counter words x1, x2),
// returning the two hashed words. Integer arithmetic only, so its output is the same bits as
// JAX's own lowering of the `threefry2x32` primitive. Why it exists: cnn_jax/threefry.py.
// Compiled for AVX-512, AVX2 and plain x86-64 (GCC picks one when the library loads).

#include <cstddef>
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline uint32_t RotateLeft(uint32_t v, uint32_t r) { return (v << r) | (v >> (32 - r)); }

__attribute__((target_clones("avx512f", "avx2", "default")))
void Hash(size_t n, const uint32_t* k1, const uint32_t* k2, const uint32_t* x1,
          const uint32_t* x2, uint32_t* y1, uint32_t* y2) {
  static const uint32_t kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
#pragma omp parallel for schedule(static) if (n >= (size_t{1} << 18))
  for (size_t i = 0; i < n; ++i) {
    const uint32_t ks[3] = {k1[i], k2[i], k1[i] ^ k2[i] ^ 0x1BD11BDAu};
    uint32_t v0 = x1[i] + ks[0];
    uint32_t v1 = x2[i] + ks[1];
    for (int s = 0; s < 5; ++s) {  // five groups of four rounds, a key injection after each
      for (int j = 0; j < 4; ++j) {
        v0 += v1;
        v1 = RotateLeft(v1, kRotations[s % 2][j]);
        v1 ^= v0;
      }
      v0 += ks[(s + 1) % 3];
      v1 += ks[(s + 2) % 3] + static_cast<uint32_t>(s + 1);
    }
    y1[i] = v0;
    y2[i] = v1;
  }
}

ffi::Error Threefry2x32(ffi::Buffer<ffi::U32> k1, ffi::Buffer<ffi::U32> k2,
                        ffi::Buffer<ffi::U32> x1, ffi::Buffer<ffi::U32> x2,
                        ffi::ResultBuffer<ffi::U32> y1, ffi::ResultBuffer<ffi::U32> y2) {
  const size_t n = x1.element_count();
  if (k1.element_count() != n || k2.element_count() != n || x2.element_count() != n) {
    return ffi::Error::InvalidArgument("threefry2x32: the four operands differ in size");
  }
  Hash(n, k1.typed_data(), k2.typed_data(), x1.typed_data(), x2.typed_data(),
       y1->typed_data(), y2->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxThreefry2x32, Threefry2x32,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
