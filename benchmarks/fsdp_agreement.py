"""How closely FSDP2 on 2 gloo processes follows one process with the same global batch: the
largest relative loss difference over 6 steps, per plan (the loop of tests/test_fsdp.py).
    python -m benchmarks.fsdp_agreement"""
import tempfile
from pathlib import Path

from tests.distributed_loops import run_two_ranks, train_loop

CASES = {  # name -> train_loop keywords
    "fp32": {"kind": "fp32"},
    "random fp32/bf16 plans, fp32 all-gather": {"kind": "random"},
    "random fp32/bf16 plans, plan all-gather": {"kind": "random", "param_dtype": "plan"},
    "bf16, bf16 all-gather": {"kind": "bf16", "param_dtype": "plan"},
    "threshold (bf16 -> fp32 switch)": {"kind": "threshold", "param_dtype": "plan"},
}


def main():
    print(f"{'case':42s} {'max rel loss diff':>18s} {'plans equal':>12s}")
    for name, kw in CASES.items():
        with tempfile.TemporaryDirectory() as d:
            r0, _ = run_two_ranks(Path(d), **kw)
        one = train_loop(0, 1, fsdp=False, **{k: v for k, v in kw.items() if k != "param_dtype"})
        diff = max(abs(a - b) / abs(b) for a, b in zip(r0["losses"], one["losses"]))
        print(f"{name:42s} {diff:>18.2e} {str(r0['hashes'] == one['hashes']):>12s}")


if __name__ == "__main__":
    main()
