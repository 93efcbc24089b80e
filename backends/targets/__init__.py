"""backends/targets"""
