"""The suite's base seed: FASTDIFF_TEST_SEED (an int; default 0, so every run draws the same inputs and a result
cannot change from one run to the next without a code change), or FASTDIFF_TEST_SEED=random for fresh inputs
(fuzzing; the seed drawn is printed in pytest's header and in op-test failure messages, to replay it)."""
import os
import random

_value = os.environ.get("FASTDIFF_TEST_SEED", "0").strip() or "0"
RUN_SEED = random.SystemRandom().randrange(2**31) if _value == "random" else int(_value)
