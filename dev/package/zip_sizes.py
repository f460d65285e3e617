"""Zips each function `sam build` produced, as `sam deploy` uploads it, and reports its size.

Usage: python dev/package/zip_sizes.py [build dir (.aws-sam/build)] [budget in MB (6)]
Exits 1 when a zip is over the budget (6 MB by default: graphfeed's own target; Lambda allows 50 MB
zipped), or when a function of the template was not built.
"""

import os
import sys
import zipfile

FUNCTIONS = ["NotifyFunction", "ConnectFunction", "ProcessChangesFunction", "RenewFunction"]


def zip_dir(directory: str, target: str) -> int:
    # What SAM's packager does: every file of the build directory, deflated, with its mode.
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for root, _, files in os.walk(directory):
            for name in sorted(files):
                path = os.path.join(root, name)
                z.write(path, os.path.relpath(path, directory))
    return os.path.getsize(target)


def main() -> int:
    build = sys.argv[1] if len(sys.argv) > 1 else ".aws-sam/build"
    limit_mb = float(sys.argv[2]) if len(sys.argv) > 2 else 6.0
    out = os.path.join(build, "..", "zips")
    os.makedirs(out, exist_ok=True)
    failed = False
    print(f"{'function':<24} {'bootstrap':>10} {'zip':>10}")
    for function in FUNCTIONS:
        directory = os.path.join(build, function)
        bootstrap = os.path.join(directory, "bootstrap")
        if not os.path.isfile(bootstrap):
            print(f"{function:<24} not built ({bootstrap} is missing)")
            failed = True
            continue
        size = zip_dir(directory, os.path.join(out, f"{function}.zip"))
        raw = os.path.getsize(bootstrap)
        over = size > limit_mb * 1_000_000
        failed |= over
        flag = f"  OVER the {limit_mb:g} MB budget" if over else ""
        print(f"{function:<24} {raw / 1e6:>8.1f} MB {size / 1e6:>8.2f} MB{flag}")
    print(f"(zips in {os.path.normpath(out)}; budget {limit_mb:g} MB each)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
