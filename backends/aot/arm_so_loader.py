"""The C++ source of ``model_so_loader``: runs the arm target's ``lib/model.so`` with TVM's runtime.

It uses only tvm-ffi headers (``tvm/runtime/*.h`` include headers that no wheel ships) and is
linked against the aarch64 ``libtvm_ffi.so`` and ``libtvm_runtime.so`` (``--no-as-needed``: the
runtime registers the Relax VM's executable loader). ``arm_so`` builds and runs it; the artifact
carries it as ``arm/lib/loader.cc`` so that it can be rebuilt on a board.
"""

from __future__ import annotations

LOADER_SOURCE = r"""// optc's loader for the arm target's TVM-runtime form (arm/lib/model.so): loads the Relax VM
// executable, calls main(inputs..., params...) once on the CPU and writes the outputs.
//
//   model_so_loader model.so spec.txt OUTDIR
//
// spec.txt: one line per argument of main, in order: "<dtype> <ndim> <dim>... <raw file>"
// (dtype as TVM spells it: float32, int64, ...). Outputs (a tensor or a nested tuple of
// tensors, flattened in order) are written to OUTDIR/output<i>.bin as raw bytes.
// Build: aarch64-linux-gnu-g++ -std=c++17 -O2 -I<tvm_ffi/include> loader.cc -L<runtime>
//        -Wl,--no-as-needed -ltvm_ffi -ltvm_runtime -o model_so_loader
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CpuAlloc {
  void AllocData(DLTensor* tensor) {
    tensor->data = std::aligned_alloc(64, (ffi::GetDataSize(*tensor) + 63) / 64 * 64 + 64);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor ReadTensor(const std::string& line) {
  std::istringstream fields(line);
  std::string dtype_name, path;
  int ndim = 0;
  fields >> dtype_name >> ndim;
  std::vector<int64_t> shape(ndim);
  for (auto& dim : shape) fields >> dim;
  fields >> path;
  if (!fields) throw std::runtime_error("bad spec line: " + line);
  DLDataType dtype = ffi::StringToDLDataType(dtype_name);
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                dtype, DLDevice{kDLCPU, 0});
  size_t size = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  std::ifstream file(path, std::ios::binary);
  file.read(static_cast<char*>(tensor.GetDLTensorPtr()->data), static_cast<std::streamsize>(size));
  if (static_cast<size_t>(file.gcount()) != size)
    throw std::runtime_error(path + ": expected " + std::to_string(size) + " bytes");
  return tensor;
}

void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* tensors) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    tensors->push_back(*tensor);
  } else if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) Flatten(item, tensors);
  } else {
    throw std::runtime_error("main returned something that is neither a tensor nor a tuple");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " model.so spec.txt OUTDIR\n";
    return 2;
  }
  try {
    std::vector<ffi::Any> arguments;
    std::ifstream spec(argv[2]);
    if (!spec) throw std::runtime_error(std::string("cannot read ") + argv[2]);
    for (std::string line; std::getline(spec, line);) {
      if (!line.empty()) arguments.emplace_back(ReadTensor(line));
    }
    ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    constexpr int kPooled = 2;
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooled);
    ffi::Function entry = vm->GetFunction("main").value();
    std::vector<ffi::AnyView> views(arguments.begin(), arguments.end());
    ffi::Any result;
    entry.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    std::vector<ffi::Tensor> outputs;
    Flatten(result, &outputs);
    for (size_t index = 0; index < outputs.size(); ++index) {
      const DLTensor* tensor = outputs[index].GetDLTensorPtr();
      std::string path = std::string(argv[3]) + "/output" + std::to_string(index) + ".bin";
      std::ofstream file(path, std::ios::binary);
      file.write(static_cast<const char*>(tensor->data) + tensor->byte_offset,
                 static_cast<std::streamsize>(ffi::GetDataSize(*tensor)));
      if (!file) throw std::runtime_error("cannot write " + path);
    }
    std::cout << "outputs " << outputs.size() << "\n";
  } catch (const std::exception& error) {
    std::cerr << "model_so_loader: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
"""
