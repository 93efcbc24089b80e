"""frontends/onnx/converters"""
