"""`python -m realtime_bench`: run the benchmark."""

from __future__ import annotations


def main() -> int:
    print("realtime-bench: not implemented yet")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
