// 2-D convolutions (forward, input gradient, weight gradient, and an inference forward pass that
// also adds a bias and a residual and applies a ReLU) on oneDNN, as XLA FFI handlers for the CPU
// backend. Layouts are cnn_jax's: activations NHWC, kernels HWIO, float32, no dilation, one group.
// oneDNN picks its own weight layout ("any"); kernels are reordered to and from HWIO here.
// Primitives are cached per shape, so a jitted train step builds each one once.
// Built by cnn_jax/onednn.py (python -m cnn_jax.onednn build); why it exists: cnn_jax/onednn.py.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// N, H, W, C of the input; H, W, I, O of the kernel; stride and padding; which pass.
using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Shapes {
  int64_t n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr, oh, ow;
  Key key(int pass) const {
    return Key(pass, n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr, 0);
  }
  dnnl::memory::desc src() const { return {{n, c, h, w}, dt::f32, tag::nhwc}; }
  dnnl::memory::desc dst() const { return {{n, o, oh, ow}, dt::f32, tag::nhwc}; }
  // HWIO kernel as oneDNN's (O, I, H, W) logical order
  dnnl::memory::desc hwio() const { return {{o, c, kh, kw}, dt::f32, tag::hwio}; }
  dnnl::memory::desc any_weights() const { return {{o, c, kh, kw}, dt::f32, tag::any}; }
  dnnl::memory::desc bias() const { return {{o}, dt::f32, tag::a}; }
  dims strides() const { return {sh, sw}; }
  dims pad_lo() const { return {pt, pl}; }
  dims pad_hi() const { return {pb, pr}; }
};

struct Cached {
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::primitive prim;
  dnnl::memory::desc weights;  // the primitive's weight layout
  bool reorder;                // whether it differs from HWIO
  dnnl::reorder to_prim;       // HWIO -> weights (fwd, bwd data) or weights -> HWIO (bwd w)
  dnnl::memory::desc scratch;  // the primitive's scratchpad, allocated per call: XLA may run
                               // one convolution on several devices at once
};

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<Cached>> cache;

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Whether to look past oneDNN's first choice. On CPUs with AVX2 but not AVX-512, oneDNN 3.2 ranks
// its brgemm kernels first; on an AVX2 AMD EPYC its direct "jit" kernels took less time for the
// forward pass of 1x1 convolutions (6-17%) and for the forward pass and input gradient of strided
// ones (3-53%) (benchmarks/RESULTS.md, "oneDNN's implementations on AVX2"). Elsewhere (3x3
// stride 1; the input gradient of 1x1 stride 1) neither won consistently: first choice kept.
// The weight gradient's first choice is already a direct kernel. CNN_JAX_ONEDNN_PICK=first keeps
// oneDNN's first choice everywhere.
bool PreferDirect(const Shapes& s, int pass) {
  static const bool first_only = [] {
    const char* v = std::getenv("CNN_JAX_ONEDNN_PICK");
    return v != nullptr && std::string(v) == "first";
  }();
  bool strided = s.sh > 1 || s.sw > 1, one_by_one = s.kh == 1 && s.kw == 1;
  return !first_only && pass != 2 && (strided || (pass != 1 && one_by_one));
}

bool Avx2Brgemm(const std::string& impl) {
  return impl.rfind("brg", 0) == 0 && impl.find(":avx2") != std::string::npos;
}

// make() builds a primitive descriptor at oneDNN's first choice. When `direct` and that choice is
// an AVX2 brgemm kernel, steps to the first AVX2 direct "jit" kernel; if there is none, builds
// the first choice again (next_impl() cannot step back).
template <class Make>
auto Pick(Make make, bool direct) {
  auto pd = make();
  if (!direct || !Avx2Brgemm(pd.impl_info_str())) return pd;
  while (pd.next_impl()) {
    std::string impl = pd.impl_info_str();
    if (impl.rfind("jit", 0) == 0 && impl.find(":avx2") != std::string::npos) return pd;
  }
  return make();
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Shapes& s, dnnl::prop_kind kind,
                                                    bool direct = false) {
  return Pick([&] {
    return dnnl::convolution_forward::primitive_desc(
        Engine(), kind, dnnl::algorithm::convolution_direct, s.src(), s.any_weights(), s.dst(),
        s.strides(), s.pad_lo(), s.pad_hi(), UserScratchpad());
  }, direct);
}

std::shared_ptr<Cached> Get(const Shapes& s, int pass) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(s.key(pass));
  if (it != cache.end()) return it->second;
  auto c = std::make_shared<Cached>();
  if (pass >= 3) {  // inference with a bias; pass - 3 = 1 (ReLU) | 2 (add the output's content)
    dnnl::primitive_attr attr = UserScratchpad();
    dnnl::post_ops ops;
    if ((pass - 3) & 2) ops.append_sum(1.f);
    if ((pass - 3) & 1) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
    c->fwd_pd = Pick([&] {
      return dnnl::convolution_forward::primitive_desc(
          Engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
          s.src(), s.any_weights(), s.bias(), s.dst(), s.strides(), s.pad_lo(), s.pad_hi(),
          attr);
    }, PreferDirect(s, pass));
  } else {
    c->fwd_pd = ForwardPd(s, pass == 0 ? dnnl::prop_kind::forward_inference
                                       : dnnl::prop_kind::forward_training,
                          pass == 0 && PreferDirect(s, pass));
  }
  if (pass == 0 || pass >= 3) {
    c->prim = dnnl::convolution_forward(c->fwd_pd);
    c->weights = c->fwd_pd.weights_desc();
    c->scratch = c->fwd_pd.scratchpad_desc();
  } else if (pass == 1) {
    auto pd = Pick([&] {
      return dnnl::convolution_backward_data::primitive_desc(
          Engine(), dnnl::algorithm::convolution_direct, s.src(), s.any_weights(), s.dst(),
          s.strides(), s.pad_lo(), s.pad_hi(), c->fwd_pd, UserScratchpad());
    }, PreferDirect(s, pass));
    c->prim = dnnl::convolution_backward_data(pd);
    c->weights = pd.weights_desc();
    c->scratch = pd.scratchpad_desc();
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, s.src(), s.any_weights(), s.dst(),
        s.strides(), s.pad_lo(), s.pad_hi(), c->fwd_pd, UserScratchpad());
    c->prim = dnnl::convolution_backward_weights(pd);
    c->weights = pd.diff_weights_desc();
    c->scratch = pd.scratchpad_desc();
  }
  c->reorder = c->weights != s.hwio();
  if (c->reorder) {
    c->to_prim = pass == 2 ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), c->weights, Engine(), s.hwio()))
                           : dnnl::reorder(dnnl::reorder::primitive_desc(
                                 Engine(), s.hwio(), Engine(), c->weights));
  }
  cache.emplace(s.key(pass), c);
  return c;
}

Shapes MakeShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                  ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                  int64_t pl, int64_t pr) {
  return Shapes{x[0], x[1], x[2], x[3], k[0], k[1], k[3], sh, sw, pt, pb, pl, pr, y[1], y[2]};
}

ffi::Error Check(ffi::Span<const int64_t> x, ffi::Span<const int64_t> k,
                 ffi::Span<const int64_t> y) {
  if (x.size() != 4 || k.size() != 4 || y.size() != 4 || x[3] != k[2] || y[3] != k[3] ||
      x[0] != y[0]) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: expected NHWC input, HWIO kernel, NHWC output");
  }
  return ffi::Error::Success();
}

#define CNN_JAX_TRY(body)                                                      \
  try {                                                                        \
    body                                                                       \
  } catch (const dnnl::error& e) {                                             \
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what()); \
  }                                                                            \
  return ffi::Error::Success();

// Forward and backward-data passes: one activation in, one out, the kernel read from HWIO,
// and for the inference forward pass with a bias, the bias.
void RunWithKernel(const Cached& c, const Shapes& s, int in_arg,
                   const dnnl::memory::desc& in_md, void* in, int out_arg,
                   const dnnl::memory::desc& out_md, void* out, void* hwio,
                   void* bias = nullptr) {
  dnnl::stream stream(Engine());
  dnnl::memory user_w(s.hwio(), Engine(), hwio);
  dnnl::memory w = user_w;
  if (c.reorder) {
    w = dnnl::memory(c.weights, Engine());
    c.to_prim.execute(stream, user_w, w);
  }
  dnnl::memory scratch(c.scratch, Engine());
  std::unordered_map<int, dnnl::memory> args = {
      {in_arg, dnnl::memory(in_md, Engine(), in)}, {DNNL_ARG_WEIGHTS, w},
      {out_arg, dnnl::memory(out_md, Engine(), out)}, {DNNL_ARG_SCRATCHPAD, scratch}};
  if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, dnnl::memory(s.bias(), Engine(), bias));
  c.prim.execute(stream, args);
  stream.wait();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt,
                   int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = Check(x.dimensions(), k.dimensions(), y->dimensions()); e.failure()) return e;
  CNN_JAX_TRY({
    Shapes s = MakeShapes(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                          pr);
    RunWithKernel(*Get(s, 0), s, DNNL_ARG_SRC, s.src(), x.typed_data(), DNNL_ARG_DST, s.dst(),
                  y->typed_data(), k.typed_data());
  })
}

// Inference: y = conv(x, k) + b (+ r when add is 1), then max(y, 0) when relu is 1, in one pass
// over the output (BatchNorm is folded into k and b by the caller). r is y's buffer as given
// (input_output_aliases), or copied there first when XLA could not alias them.
ffi::Error ForwardBias(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> b,
                       ffi::Buffer<ffi::F32> r, ffi::ResultBuffer<ffi::F32> y, int64_t sh,
                       int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t relu,
                       int64_t add) {
  if (auto e = Check(x.dimensions(), k.dimensions(), y->dimensions()); e.failure()) return e;
  if (b.dimensions().size() != 1 || b.dimensions()[0] != k.dimensions()[3] ||
      (add && r.element_count() != y->element_count())) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "onednn conv: expected one bias per output channel and a residual of the "
                      "output's shape");
  }
  if (add && r.typed_data() != y->typed_data()) {
    std::memcpy(y->typed_data(), r.typed_data(), y->size_bytes());
  }
  CNN_JAX_TRY({
    Shapes s = MakeShapes(x.dimensions(), k.dimensions(), y->dimensions(), sh, sw, pt, pb, pl,
                          pr);
    RunWithKernel(*Get(s, 3 + (relu ? 1 : 0) + (add ? 2 : 0)), s, DNNL_ARG_SRC, s.src(),
                  x.typed_data(), DNNL_ARG_DST, s.dst(), y->typed_data(), k.typed_data(),
                  b.typed_data());
  })
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = Check(dx->dimensions(), k.dimensions(), dy.dimensions()); e.failure()) return e;
  CNN_JAX_TRY({
    Shapes s = MakeShapes(dx->dimensions(), k.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                          pr);
    RunWithKernel(*Get(s, 1), s, DNNL_ARG_DIFF_DST, s.dst(), dy.typed_data(), DNNL_ARG_DIFF_SRC,
                  s.src(), dx->typed_data(), k.typed_data());
  })
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dk, int64_t sh, int64_t sw, int64_t pt,
                           int64_t pb, int64_t pl, int64_t pr) {
  if (auto e = Check(x.dimensions(), dk->dimensions(), dy.dimensions()); e.failure()) return e;
  CNN_JAX_TRY({
    Shapes s = MakeShapes(x.dimensions(), dk->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                          pr);
    auto c = Get(s, 2);
    dnnl::stream stream(Engine());
    dnnl::memory src(s.src(), Engine(), x.typed_data());
    dnnl::memory diff_dst(s.dst(), Engine(), dy.typed_data());
    dnnl::memory user_dw(s.hwio(), Engine(), dk->typed_data());
    dnnl::memory dw = c->reorder ? dnnl::memory(c->weights, Engine()) : user_dw;
    dnnl::memory scratch(c->scratch, Engine());
    c->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                             {DNNL_ARG_DIFF_WEIGHTS, dw}, {DNNL_ARG_SCRATCHPAD, scratch}});
    if (c->reorder) c->to_prim.execute(stream, dw, user_dw);
    stream.wait();
  })
}

}  // namespace

#define CNN_JAX_ATTRS                                                                   \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")         \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_JAX_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvForwardBias, ForwardBias,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_JAX_ATTRS
                                  .Attr<int64_t>("relu")
                                  .Attr<int64_t>("add"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_JAX_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxOnednnConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() CNN_JAX_ATTRS);
