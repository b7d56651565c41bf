"""What every benchmark script shares: the thread count, a one-line description of the machine, and the
Markdown table it prints. Scripts import this as `common` (Python puts the script's folder on sys.path)."""
import os
import platform
import statistics

import torch


def add_threads_argument(parser) -> None:
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads (default: PyTorch's default here, %(default)s)")


def fix_threads(n: int) -> str:
    """Set PyTorch's intra-op thread count and return the line saying so."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return f"torch.set_num_threads({torch.get_num_threads()})"


def machine() -> str:
    """Python, torch and CPU in one line, for the header of every table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"Python {platform.python_version()}, torch {torch.__version__}, {cpu}, "
            f"{os.cpu_count()} logical CPUs")


def median_and_spread(values: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile."""
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), deciles[0], deciles[-1]


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` holds one of "l"/"r" per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = [headers, rule] + [[str(cell) for cell in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
