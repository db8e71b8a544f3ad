// CPU kernels for XLA's FFI (float32, NHWC), used by mobilenets/layers.py on the CPU backend:
//
//   DepthwiseConv, DepthwiseConvTranspose, DepthwiseKernelGrad   the depthwise convolution, its
//       input gradient and its kernel gradient;
//   SmallInputConv, SmallInputConvKernelGrad   the stem: a dense convolution on RGB input;
//   MomentSums, BatchNormBackward   BatchNorm's batch statistics and its (+ ReLU6) backward pass.
//
// Why: XLA:CPU makes one pass over the activations per reduction (the depthwise kernel gradient
// is k * k of them), and it fuses the shifted-sum depthwise convolution, recomputed, into every
// consumer of its output. Here each is one or two passes, with accumulators in cache or in
// registers and the channel loop vectorised. Sums over the batch are cut into a fixed number of
// slices added in a fixed order, so no result depends on the number of threads. The jnp code in
// layers.py defines the same functions and is what the tests compare against.
//
// Built on first use by mobilenets/cpu_kernels.py with the host's compiler; see there.

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

// The depthwise kernel gradient, image `n`'s part, added to `acc` [k, k, C]:
// dkernel[a, b, c] = sum over n, i, j of
//     grad_out[n, i, j, c] * x[n, stride * i + a - pad_top, stride * j + b - pad_left, c].
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
  // The caller works too: with the pool's size in workers the cores are not oversubscribed.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, slices - 1);
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->done.wait(lock, [&] { return state->finished == slices; });
}

struct DepthwiseShapes {
  int64_t batch, height, width, channels, out_h, out_w, k;
};

// x: [N, H, W, C] (the image side), y: [N, OH, OW, C] (the output side), kernel [k, k, 1, C].
ffi::ErrorOr<DepthwiseShapes> CheckDepthwise(ffi::Buffer<ffi::F32>& image,
                                             ffi::Buffer<ffi::F32>& kernel, int64_t out_h,
                                             int64_t out_w) {
  auto x = image.dimensions();
  auto k = kernel.dimensions();
  if (x.size() != 4 || k.size() != 4 || k[0] != k[1] || k[2] != 1 || k[3] != x[3]) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("depthwise: expected NHWC images and a (k, k, 1, C) kernel"));
  }
  return DepthwiseShapes{x[0], x[1], x[2], x[3], out_h, out_w, k[0]};
}

// out[n, i, j, c] = sum_{a, b} x[n, s*i + a - pad_top, s*j + b - pad_left, c] * kernel[a, b, c]:
// one output row at a time, accumulated in cache, the channel loop vectorised.
ffi::Error DepthwiseConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> out,
                             int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto shapes = CheckDepthwise(x, kernel, out->dimensions()[1], out->dimensions()[2]);
  if (shapes.has_error()) return shapes.error();
  const DepthwiseShapes d = shapes.value();
  const float* x_data = x.typed_data();
  const float* k_data = kernel.typed_data();
  float* out_data = out->typed_data();
  ParallelFor(pool, d.batch, [=](int64_t n) {
    const float* x_image = x_data + n * d.height * d.width * d.channels;
    float* out_image = out_data + n * d.out_h * d.out_w * d.channels;
    std::fill(out_image, out_image + d.out_h * d.out_w * d.channels, 0.0f);
    for (int64_t i = 0; i < d.out_h; ++i) {
      float* out_row = out_image + i * d.out_w * d.channels;
      for (int64_t a = 0; a < d.k; ++a) {
        const int64_t row = stride * i + a - pad_top;
        if (row < 0 || row >= d.height) continue;
        const float* x_row = x_image + row * d.width * d.channels;
        for (int64_t j = 0; j < d.out_w; ++j) {
          float* __restrict o = out_row + j * d.channels;
          for (int64_t b = 0; b < d.k; ++b) {
            const int64_t col = stride * j + b - pad_left;
            if (col < 0 || col >= d.width) continue;
            const float* __restrict xv = x_row + col * d.channels;
            const float* __restrict kv = k_data + (a * d.k + b) * d.channels;
#pragma GCC ivdep
            for (int64_t c = 0; c < d.channels; ++c) o[c] += xv[c] * kv[c];
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

// The adjoint of DepthwiseConv with respect to x (the input gradient): every output gradient
// pixel adds grad * kernel[a, b] to the input pixel that tap (a, b) read. Per image, so the
// scattered additions never race and their order is fixed.
ffi::Error DepthwiseConvTransposeImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> grad_out,
                                      ffi::Buffer<ffi::F32> kernel,
                                      ffi::ResultBuffer<ffi::F32> grad_x, int64_t stride,
                                      int64_t pad_top, int64_t pad_left) {
  auto g_dims = grad_out.dimensions();
  auto x_dims = grad_x->dimensions();
  if (g_dims.size() != 4 || x_dims.size() != 4 || g_dims[0] != x_dims[0] ||
      g_dims[3] != x_dims[3]) {
    return ffi::Error::InvalidArgument("depthwise_conv_transpose: inconsistent shapes");
  }
  auto shapes = CheckDepthwise(grad_out, kernel, g_dims[1], g_dims[2]);
  if (shapes.has_error()) return shapes.error();
  const int64_t k = shapes.value().k, channels = x_dims[3];
  const int64_t batch = x_dims[0], height = x_dims[1], width = x_dims[2];
  const int64_t out_h = g_dims[1], out_w = g_dims[2];
  const float* g_data = grad_out.typed_data();
  const float* k_data = kernel.typed_data();
  float* dx_data = grad_x->typed_data();
  ParallelFor(pool, batch, [=](int64_t n) {
    const float* g_image = g_data + n * out_h * out_w * channels;
    float* dx_image = dx_data + n * height * width * channels;
    std::fill(dx_image, dx_image + height * width * channels, 0.0f);
    for (int64_t i = 0; i < out_h; ++i) {
      const float* g_row = g_image + i * out_w * channels;
      for (int64_t a = 0; a < k; ++a) {
        const int64_t row = stride * i + a - pad_top;
        if (row < 0 || row >= height) continue;
        float* dx_row = dx_image + row * width * channels;
        for (int64_t j = 0; j < out_w; ++j) {
          const float* __restrict g = g_row + j * channels;
          for (int64_t b = 0; b < k; ++b) {
            const int64_t col = stride * j + b - pad_left;
            if (col < 0 || col >= width) continue;
            float* __restrict dxv = dx_row + col * channels;
            const float* __restrict kv = k_data + (a * k + b) * channels;
#pragma GCC ivdep
            for (int64_t c = 0; c < channels; ++c) dxv[c] += g[c] * kv[c];
          }
        }
      }
    }
  });
  return ffi::Error::Success();
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


// 16 floats as one value (GCC/Clang vector extension): one AVX-512 register, two AVX2 ones.
constexpr int64_t kLanes = 16;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

inline Lanes LoadLanes(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}

inline void StoreLanes(float* p, Lanes v) { std::memcpy(p, &v, sizeof v); }

// A dense convolution with few input channels: the stem, RGB -> 32 channels, stride 2.
// out[n, i, j, :] = sum_{a, b, ci} x[n, s*i + a - pad_top, s*j + b - pad_left, ci] * w[a, b, ci, :],
// vectorised over the output channels. With three input channels neither XLA:CPU's YNNPACK
// convolution (18 GFLOP/s here) nor a GEMM over 27-wide patches uses the machine well.
ffi::Error SmallInputConvImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> out,
                              int64_t stride, int64_t pad_top, int64_t pad_left) {
  auto x_dims = x.dimensions();
  auto k_dims = kernel.dimensions();
  auto o_dims = out->dimensions();
  if (x_dims.size() != 4 || k_dims.size() != 4 || o_dims.size() != 4 || k_dims[0] != k_dims[1] ||
      k_dims[2] != x_dims[3] || o_dims[3] != k_dims[3] || o_dims[0] != x_dims[0]) {
    return ffi::Error::InvalidArgument("small_input_conv: inconsistent shapes");
  }
  const int64_t height = x_dims[1], width = x_dims[2], in_ch = x_dims[3];
  const int64_t k = k_dims[0], out_ch = k_dims[3], out_h = o_dims[1], out_w = o_dims[2];
  const float* x_data = x.typed_data();
  const float* w_data = kernel.typed_data();
  float* out_data = out->typed_data();
  ParallelFor(pool, x_dims[0], [=](int64_t n) {
    const float* x_image = x_data + n * height * width * in_ch;
    for (int64_t i = 0; i < out_h; ++i) {
      for (int64_t j = 0; j < out_w; ++j) {
        float* __restrict o = out_data + ((n * out_h + i) * out_w + j) * out_ch;
        if (out_ch % kLanes == 0) {
          // Each block of 16 output channels accumulates in a register over all k * k * Ci
          // terms (a loop over a plain array left it in memory: 4x slower).
          for (int64_t c0 = 0; c0 < out_ch; c0 += kLanes) {
            Lanes acc = {};
            for (int64_t a = 0; a < k; ++a) {
              const int64_t row = stride * i + a - pad_top;
              if (row < 0 || row >= height) continue;
              for (int64_t b = 0; b < k; ++b) {
                const int64_t col = stride * j + b - pad_left;
                if (col < 0 || col >= width) continue;
                const float* xv = x_image + (row * width + col) * in_ch;
                const float* w = w_data + (a * k + b) * in_ch * out_ch + c0;
                for (int64_t ci = 0; ci < in_ch; ++ci) acc += xv[ci] * LoadLanes(w + ci * out_ch);
              }
            }
            StoreLanes(o + c0, acc);
          }
          continue;
        }
        std::fill(o, o + out_ch, 0.0f);
        for (int64_t a = 0; a < k; ++a) {
          const int64_t row = stride * i + a - pad_top;
          if (row < 0 || row >= height) continue;
          for (int64_t b = 0; b < k; ++b) {
            const int64_t col = stride * j + b - pad_left;
            if (col < 0 || col >= width) continue;
            const float* xv = x_image + (row * width + col) * in_ch;
            for (int64_t ci = 0; ci < in_ch; ++ci) {
              const float value = xv[ci];
              const float* __restrict w = w_data + ((a * k + b) * in_ch + ci) * out_ch;
#pragma GCC ivdep
              for (int64_t co = 0; co < out_ch; ++co) o[co] += value * w[co];
            }
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

// Its kernel gradient: dw[a, b, ci, :] = sum_{n, i, j} x[n, s*i + a - pad_top, ...] * grad[n, i, j, :],
// in eight fixed batch slices summed in a fixed order (deterministic, as DepthwiseKernelGrad).
ffi::Error SmallInputConvKernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                        ffi::Buffer<ffi::F32> grad_out,
                                        ffi::ResultBuffer<ffi::F32> dk, int64_t stride,
                                        int64_t pad_top, int64_t pad_left) {
  auto x_dims = x.dimensions();
  auto g_dims = grad_out.dimensions();
  auto k_dims = dk->dimensions();
  if (x_dims.size() != 4 || g_dims.size() != 4 || k_dims.size() != 4 || k_dims[0] != k_dims[1] ||
      k_dims[2] != x_dims[3] || g_dims[3] != k_dims[3] || g_dims[0] != x_dims[0]) {
    return ffi::Error::InvalidArgument("small_input_conv_kernel_grad: inconsistent shapes");
  }
  const int64_t batch = x_dims[0], height = x_dims[1], width = x_dims[2], in_ch = x_dims[3];
  const int64_t k = k_dims[0], out_ch = k_dims[3], out_h = g_dims[1], out_w = g_dims[2];
  const int64_t weights = k * k * in_ch * out_ch;
  const int64_t slices = std::min<int64_t>(batch, 8);
  std::vector<float> partial(slices * weights, 0.0f);
  const float* x_data = x.typed_data();
  const float* g_data = grad_out.typed_data();
  float* partial_data = partial.data();
  ParallelFor(pool, slices, [=](int64_t s) {
    float* acc = partial_data + s * weights;
    for (int64_t n = s * batch / slices; n < (s + 1) * batch / slices; ++n) {
      const float* x_image = x_data + n * height * width * in_ch;
      for (int64_t i = 0; i < out_h && out_ch % kLanes == 0; ++i) {
        // One output row's gradient stays in L1 while each (tap, input channel, block of 16
        // output channels) sums over it in a register.
        const float* g_row = g_data + (n * out_h + i) * out_w * out_ch;
        for (int64_t a = 0; a < k; ++a) {
          const int64_t row = stride * i + a - pad_top;
          if (row < 0 || row >= height) continue;
          const float* x_row = x_image + row * width * in_ch;
          for (int64_t b = 0; b < k; ++b) {
            // Output columns whose tap b falls inside the image: col = stride * j + b - pad_left.
            int64_t first = 0, last = out_w;
            while (first < last && stride * first + b - pad_left < 0) ++first;
            while (last > first && stride * (last - 1) + b - pad_left >= width) --last;
            for (int64_t ci = 0; ci < in_ch; ++ci) {
              float* w = acc + ((a * k + b) * in_ch + ci) * out_ch;
              for (int64_t c0 = 0; c0 < out_ch; c0 += kLanes) {
                Lanes sum = {};
                for (int64_t j = first; j < last; ++j) {
                  const float value = x_row[(stride * j + b - pad_left) * in_ch + ci];
                  sum += value * LoadLanes(g_row + j * out_ch + c0);
                }
                StoreLanes(w + c0, LoadLanes(w + c0) + sum);
              }
            }
          }
        }
      }
      for (int64_t i = 0; i < out_h && out_ch % kLanes != 0; ++i) {
        for (int64_t j = 0; j < out_w; ++j) {
          const float* __restrict g = g_data + ((n * out_h + i) * out_w + j) * out_ch;
          for (int64_t a = 0; a < k; ++a) {
            const int64_t row = stride * i + a - pad_top;
            if (row < 0 || row >= height) continue;
            for (int64_t b = 0; b < k; ++b) {
              const int64_t col = stride * j + b - pad_left;
              if (col < 0 || col >= width) continue;
              const float* xv = x_image + (row * width + col) * in_ch;
              for (int64_t ci = 0; ci < in_ch; ++ci) {
                const float value = xv[ci];
                float* __restrict w = acc + ((a * k + b) * in_ch + ci) * out_ch;
#pragma GCC ivdep
                for (int64_t co = 0; co < out_ch; ++co) w[co] += value * g[co];
              }
            }
          }
        }
      }
    }
  });
  float* out = dk->typed_data();
  std::memcpy(out, partial_data, weights * sizeof(float));
  for (int64_t s = 1; s < slices; ++s) {
    const float* p = partial_data + s * weights;
    for (int64_t t = 0; t < weights; ++t) out[t] += p[t];
  }
  return ffi::Error::Success();
}

// Two per-channel sums over the rows of [rows, C] arrays (BatchNorm's reductions) in one pass,
// instead of one XLA reduction per sum. `terms(row, c, sum0, sum1)` adds row `row`'s terms for
// channel c. Blocks of 64 rows are summed in float, row by row (a contiguous stream), then
// added to double accumulators, so the fast variance E[x^2] - E[x]^2 loses nothing to cancellation over
// ~10^5-10^6 rows. Rows are cut into a fixed number of slices, summed in a fixed order: the
// result does not depend on the thread count.
template <typename Terms>
void ChannelSumPair(ffi::ThreadPool& pool, int64_t rows, int64_t channels, Terms terms,
                    float* out0, float* out1) {
  constexpr int64_t kRowBlock = 64;
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(16, rows / 256));
  std::vector<double> partial(slices * 2 * channels, 0.0);
  double* partial_data = partial.data();
  ParallelFor(pool, slices, [=](int64_t s) {
    double* acc0 = partial_data + s * 2 * channels;
    double* acc1 = acc0 + channels;
    std::vector<float> block_sums(2 * channels);
    float* __restrict sum0 = block_sums.data();
    float* __restrict sum1 = sum0 + channels;
    const int64_t end = (s + 1) * rows / slices;
    for (int64_t first = s * rows / slices; first < end; first += kRowBlock) {
      std::fill(sum0, sum0 + 2 * channels, 0.0f);
      for (int64_t row = first; row < std::min(end, first + kRowBlock); ++row) {
#pragma GCC ivdep
        for (int64_t c = 0; c < channels; ++c) terms(row, c, sum0[c], sum1[c]);
      }
      for (int64_t c = 0; c < channels; ++c) {
        acc0[c] += sum0[c];
        acc1[c] += sum1[c];
      }
    }
  });
  for (int64_t c = 0; c < channels; ++c) {
    double total0 = 0.0, total1 = 0.0;
    for (int64_t s = 0; s < slices; ++s) {
      total0 += partial_data[s * 2 * channels + c];
      total1 += partial_data[s * 2 * channels + channels + c];
    }
    out0[c] = static_cast<float>(total0);
    out1[c] = static_cast<float>(total1);
  }
}

ffi::Error CheckRowsByChannels(ffi::Buffer<ffi::F32>& x, int64_t channels) {
  auto dims = x.dimensions();
  if (dims.size() != 2 || dims[1] != channels) {
    return ffi::Error::InvalidArgument("expected a [rows, channels] float32 array");
  }
  return ffi::Error::Success();
}

// (sum_r x[r, c], sum_r x[r, c]^2): the batch statistics of BatchNorm's forward pass.
ffi::Error MomentSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::ResultBuffer<ffi::F32> sum, ffi::ResultBuffer<ffi::F32> sum_sq) {
  const int64_t channels = sum->element_count();
  if (auto error = CheckRowsByChannels(x, channels); error.failure()) return error;
  const int64_t rows = x.dimensions()[0];
  const float* data = x.typed_data();
  ChannelSumPair(
      pool, rows, channels,
      [=](int64_t row, int64_t c, float& total, float& total_sq) {
        const float value = data[row * channels + c];
        total += value;
        total_sq += value * value;
      },
      sum->typed_data(), sum_sq->typed_data());
  return ffi::Error::Success();
}

// The backward pass of BatchNorm in training mode (+ ReLU6), `layers.batch_norm_in_training`:
//   g = grad_out, masked where relu6 is set to 0 < (x - mean) * gain + bias < 6, gain =
//   scale * inv_std (the pre-activation recomputed from x exactly as the forward pass rounds it);
//   dbias = sum_r g,  dscale = (sum_r g * x - mean * dbias) * inv_std,
//   dx = gain * (g - dbias / rows) - (x - mean) * (gain * inv_std * dscale / rows).
// Two passes over the activations: the sums, then dx. XLA would write g out for its two
// reductions, or, given the sums, fuse the elementwise dx into every consumer of it (the nine
// taps of a depthwise backward among them) and recompute it there.
template <bool kRelu6>  // a compile-time flag: a runtime one leaves conditional loads (gathers)
ffi::Error BatchNormBackwardPasses(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& grad_out,
                             ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& mean,
                             ffi::Buffer<ffi::F32>& inv_std, ffi::Buffer<ffi::F32>& scale,
                             ffi::Buffer<ffi::F32>& bias, ffi::ResultBuffer<ffi::F32>& grad_x,
                             ffi::ResultBuffer<ffi::F32>& grad_scale,
                             ffi::ResultBuffer<ffi::F32>& grad_bias) {
  const int64_t channels = grad_bias->element_count();
  if (auto error = CheckRowsByChannels(x, channels); error.failure()) return error;
  if (auto error = CheckRowsByChannels(grad_out, channels); error.failure()) return error;
  if (mean.element_count() != channels || inv_std.element_count() != channels ||
      scale.element_count() != channels || bias.element_count() != channels ||
      grad_scale->element_count() != channels || grad_x->element_count() != x.element_count() ||
      grad_out.dimensions()[0] != x.dimensions()[0]) {
    return ffi::Error::InvalidArgument("batch_norm_backward: inconsistent shapes");
  }
  const int64_t rows = x.dimensions()[0];
  const float* g_data = grad_out.typed_data();
  const float* x_data = x.typed_data();
  const float* mean_data = mean.typed_data();
  const float* bias_data = bias.typed_data();
  std::vector<float> gain_vector(channels);
  float* gain = gain_vector.data();
  for (int64_t c = 0; c < channels; ++c) gain[c] = scale.typed_data()[c] * inv_std.typed_data()[c];
  // g[c] of one row. Loads the gradient unconditionally (a load under the condition would not
  // vectorise), through row pointers (with flat indices GCC emits gathers).
  auto masked = [=](const float* __restrict g_row, const float* __restrict x_row, int64_t c) {
    const float upstream = g_row[c];
    if (!kRelu6) return upstream;
    const float pre = (x_row[c] - mean_data[c]) * gain[c] + bias_data[c];
    return (pre > 0.0f && pre < 6.0f) ? upstream : 0.0f;
  };
  float* sum_grad = grad_bias->typed_data();
  float* sum_grad_x = grad_scale->typed_data();
  auto terms = [=](int64_t row, int64_t c, float& total, float& total_x) {
    const float* x_row = x_data + row * channels;
    const float grad = masked(g_data + row * channels, x_row, c);
    total += grad;
    total_x += grad * x_row[c];
  };
  ChannelSumPair(pool, rows, channels, terms, sum_grad, sum_grad_x);

  std::vector<float> coefficients(2 * channels);
  float* centered_gain = coefficients.data();  // gain * inv_std * dscale / rows
  float* mean_grad = centered_gain + channels;  // dbias / rows
  for (int64_t c = 0; c < channels; ++c) {
    const float inv = inv_std.typed_data()[c];
    sum_grad_x[c] = (sum_grad_x[c] - mean_data[c] * sum_grad[c]) * inv;  // now dscale
    centered_gain[c] = gain[c] * inv * sum_grad_x[c] / static_cast<float>(rows);
    mean_grad[c] = sum_grad[c] / static_cast<float>(rows);
  }
  float* dx = grad_x->typed_data();
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(16, rows / 256));
  ParallelFor(pool, slices, [=](int64_t s) {
    for (int64_t row = s * rows / slices; row < (s + 1) * rows / slices; ++row) {
      const float* __restrict g_row = g_data + row * channels;
      const float* __restrict x_row = x_data + row * channels;
      float* __restrict dx_row = dx + row * channels;
#pragma GCC ivdep
      for (int64_t c = 0; c < channels; ++c) {
        dx_row[c] = gain[c] * (masked(g_row, x_row, c) - mean_grad[c]) -
                    (x_row[c] - mean_data[c]) * centered_gain[c];
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error BatchNormBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> grad_out,
                                 ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> mean,
                                 ffi::Buffer<ffi::F32> inv_std, ffi::Buffer<ffi::F32> scale,
                                 ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> grad_x,
                                 ffi::ResultBuffer<ffi::F32> grad_scale,
                                 ffi::ResultBuffer<ffi::F32> grad_bias, bool relu6) {
  return relu6 ? BatchNormBackwardPasses<true>(pool, grad_out, x, mean, inv_std, scale, bias, grad_x,
                                         grad_scale, grad_bias)
               : BatchNormBackwardPasses<false>(pool, grad_out, x, mean, inv_std, scale, bias, grad_x,
                                          grad_scale, grad_bias);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseConv, DepthwiseConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseConvTranspose, DepthwiseConvTransposeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grad_out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_x
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DepthwiseKernelGrad, DepthwiseKernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(MomentSums, MomentSumsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(BatchNormBackward, BatchNormBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grad_out
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // inv_std
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_scale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // grad_bias
                                  .Attr<bool>("relu6"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmallInputConv, SmallInputConvImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SmallInputConvKernelGrad, SmallInputConvKernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // grad_out
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dkernel
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
