// qkernels._C: importing it registers the ops (ops.cpp, bind_*.cpp); the few Python functions
// here report build facts and format constants for tests. No torch headers needed.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <initializer_list>
#include <vector>

#include "../core/formats.h"
#include "../core/qmatmul_a8.h"
#include "../cpu/dispatch.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "qkernels compiled extension: op registrations and build facts";

  m.def("format_constants", [] {
    py::dict constants;
    constants["nf4_table"] = std::vector<float>(std::begin(qk::kNF4Table), std::end(qk::kNF4Table));
    constants["int8_max_code"] = qk::kInt8MaxCode;
    constants["int4_max_code"] = qk::kInt4MaxCode;
    constants["int4_symmetric_zero"] = qk::kInt4SymmetricZero;
    constants["nibble_bits_low"] = qk::kNibbleBitsLow;
    constants["nibble_bits_high"] = qk::kNibbleBitsHigh;
    constants["double_quant_block"] = qk::kDoubleQuantBlock;
    constants["activation_block"] = qk::kActivationBlock;
    constants["activation_max_code"] = qk::kActivationMaxCode;
    constants["nf4_q15_one"] = qk::kNF4Q15One;
    constants["nf4_table_q15"] = std::vector<int>(std::begin(qk::kNF4TableQ15.values),
                                                  std::end(qk::kNF4TableQ15.values));
    constants["formats"] = py::dict(py::arg("int8") = int(qk::Format::kInt8),
                                    py::arg("int4") = int(qk::Format::kInt4),
                                    py::arg("nf4") = int(qk::Format::kNF4));
    return constants;
  }, "The format constants compiled into the kernels (csrc/core/formats.h).");

  m.def("cpu_isas", [] {
    std::vector<std::string> names;
    for (auto isa : {qk::cpu::Isa::kScalar, qk::cpu::Isa::kAvx2, qk::cpu::Isa::kNeon}) {
      if (qk::cpu::isa_available(isa)) names.emplace_back(qk::cpu::isa_name(isa));
    }
    return names;
  }, "CPU kernel paths built into this binary and supported by this CPU.");

  m.def("cpu_best_isa", [] { return std::string(qk::cpu::isa_name(qk::cpu::best_isa())); },
        "The CPU path taken unless QKERNELS_CPU_ISA forces another.");

#ifdef QKERNELS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
