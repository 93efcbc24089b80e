"""backends/lower"""
