from .kit.cli import main

if __name__ == "__main__":  # spawned worker processes (the DES-MoE grid) import this module too
    raise SystemExit(main())
