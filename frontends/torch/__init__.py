"""frontends/torch"""
