"""`python -m worldvla.train --config configs/<preset>.yaml [key=value ...]` (see worldvla/train/README.md)."""

from worldvla.train.loop import main

if __name__ == "__main__":
    main()
