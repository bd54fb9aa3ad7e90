// The autograd kernel of fastdiff::geglu, for every device: ∂x = geglu_backward(∂out, x) (the CPU and CUDA kernels
// of csrc/cpu/geglu.cpp and csrc/cuda/geglu.cu). In C++ rather than through torch.library.register_autograd
// (fastdiff/ops/_register.py registers the fake kernels only): GEGLU runs dozens of times per model forward, and
// register_autograd's Python kernel cost ~5 µs a call on a 2-core CPU, with grad or without, more than the whole
// op at a small model's sizes and more than diffusers' eager chunk + F.gelu + multiply.
#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

namespace fastdiff {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& x, c10::string_view approximate) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastdiff::geglu", "")
                             .typed<at::Tensor(const at::Tensor&, c10::string_view)>();
  return op.call(x, approximate);
}

at::Tensor call_backward(const at::Tensor& grad_out, const at::Tensor& x, c10::string_view approximate) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastdiff::geglu_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view)>();
  return op.call(grad_out, x, approximate);
}

class Geglu : public torch::autograd::Function<Geglu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::string_view approximate) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x});
    ctx->saved_data["approximate"] = std::string(approximate);
    return call_forward(x, approximate);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const std::string approximate = ctx->saved_data["approximate"].toStringRef();
    return {call_backward(grad_outputs[0], x, approximate), at::Tensor()};
  }
};

at::Tensor geglu_autograd(const at::Tensor& x, c10::string_view approximate) { return Geglu::apply(x, approximate); }

}  // namespace

TORCH_LIBRARY_IMPL(fastdiff, Autograd, m) { m.impl("geglu", &geglu_autograd); }

}  // namespace fastdiff
