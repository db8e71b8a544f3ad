// CPU kernels for XLA's FFI: the depthwise-convolution kernel gradient.
//
// dkernel[a, b, c] = sum over n, i, j of
//     grad_out[n, i, j, c] * x[n, stride * i + a - pad_top, stride * j + b - pad_left, c]
// (zero outside the image). Written as XLA ops this is k * k separate multiply-reduce passes
// over the activations; here it is one pass, with the k * k * C accumulators in L1/L2 cache and
// the channel loop vectorised. The batch is cut into a fixed number of slices whose partial sums
// are added in a fixed order, so the result does not depend on the number of threads.
//
// Built by mobilenets/cpu_kernels.py with the host compiler; see there.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Adds image `n`'s contribution to `acc` [k, k, C].
void AccumulateImage(const float* __restrict x, const float* __restrict grad, float* __restrict acc,
                     int64_t n, int64_t height, int64_t width, int64_t channels, int64_t out_h,
                     int64_t out_w, int64_t k, int64_t stride, int64_t pad_top,
                     int64_t pad_left) {
  const float* x_image = x + n * height * width * channels;
  const float* grad_image = grad + n * out_h * out_w * channels;
  for (int64_t i = 0; i < out_h; ++i) {
    const float* grad_row = grad_image + i * out_w * channels;
    for (int64_t a = 0; a < k; ++a) {
      const int64_t row = stride * i + a - pad_top;
      if (row < 0 || row >= height) continue;
      const float* x_row = x_image + row * width * channels;
      for (int64_t j = 0; j < out_w; ++j) {
        const float* __restrict g = grad_row + j * channels;
        for (int64_t b = 0; b < k; ++b) {
          const int64_t col = stride * j + b - pad_left;
          if (col < 0 || col >= width) continue;
          const float* __restrict xv = x_row + col * channels;
          float* __restrict out = acc + (a * k + b) * channels;
#pragma GCC ivdep
          for (int64_t c = 0; c < channels; ++c) out[c] += g[c] * xv[c];
        }
      }
    }
  }
}

// Runs `slices` tasks on the caller and the pool. A task is claimed through an atomic counter,
// so a pool thread that starts late finds nothing left and returns: the caller never waits for
// a task that has not started, which keeps nested use of the pool free of deadlocks.
template <typename Task>
void ParallelFor(ffi::ThreadPool& pool, int64_t slices, Task task) {
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mutex;
    std::condition_variable done;
    int64_t finished = 0;
  };
  auto state = std::make_shared<State>();
  auto work = [state, slices, task]() {
    int64_t count = 0;
    for (int64_t s = state->next.fetch_add(1); s < slices; s = state->next.fetch_add(1)) {
      task(s);
      ++count;
    }
    if (count > 0) {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->finished += count;
      state->done.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), slices - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->done.wait(lock, [&] { return state->finished == slices; });
}

ffi::Error DepthwiseKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                   ffi::Buffer<ffi::F32> grad_out, ffi::ResultBuffer<ffi::F32> dk,
                                   int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto x_dims = x.dimensions();
  auto g_dims = grad_out.dimensions();
  auto k_dims = dk->dimensions();
  if (x_dims.size() != 4 || g_dims.size() != 4 || k_dims.size() != 4) {
    return ffi::Error::InvalidArgument("depthwise_kernel_grad: expected NHWC x and grad, HWIO dk");
  }
  const int64_t batch = x_dims[0], height = x_dims[1], width = x_dims[2], channels = x_dims[3];
  const int64_t out_h = g_dims[1], out_w = g_dims[2], k = k_dims[0];
  if (g_dims[0] != batch || g_dims[3] != channels || k_dims[1] != k || k_dims[2] != 1 ||
      k_dims[3] != channels) {
    return ffi::Error::InvalidArgument("depthwise_kernel_grad: inconsistent shapes");
  }
  const int64_t taps = k * k * channels;
  // Fixed slicing (independent of the thread count): deterministic sums.
  const int64_t slices = std::min<int64_t>(batch, 8);
  std::vector<float> partial(slices * taps, 0.0f);
  const float* x_data = x.typed_data();
  const float* g_data = grad_out.typed_data();
  float* partial_data = partial.data();
  ParallelFor(pool, slices, [=](int64_t s) {
    float* acc = partial_data + s * taps;
    for (int64_t n = s * batch / slices; n < (s + 1) * batch / slices; ++n) {
      AccumulateImage(x_data, g_data, acc, n, height, width, channels, out_h, out_w, k, stride,
                      pad_top, pad_left);
    }
  });
  float* out = dk->typed_data();
  std::memcpy(out, partial_data, taps * sizeof(float));
  for (int64_t s = 1; s < slices; ++s) {
    const float* p = partial_data + s * taps;
    for (int64_t t = 0; t < taps; ++t) out[t] += p[t];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseKernelGrad, DepthwiseKernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
