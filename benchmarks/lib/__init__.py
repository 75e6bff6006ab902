"""What the benchmark scripts share: the environment stamp, formatting, one job pool, CPU memory.

Each benchmark script is its protocol (what to run), a job function and a renderer; everything
else lives here. The scripts put ``benchmarks/`` on ``sys.path`` (they are run as files), so this
package imports as ``lib``.
"""
