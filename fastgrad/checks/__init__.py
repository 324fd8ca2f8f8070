"""The checks users call: check() and assert_gradients() over sampled coordinates, audit() over
random directions; siblings over one preparation step, one engine, one judge."""
